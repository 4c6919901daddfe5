#!/usr/bin/env bash
# A copy of ../shared/tools/slurm-local/stop.sh (carried here so users can try the cluster path).
# Stop only the daemons that start.sh started (PIDs in $VAR/run/*.fgpid).
# Never uses pkill/killall. Cancels queued/running jobs of this cluster first.
set -uo pipefail
BASE=${SLURM_LOCAL_BASE:-/tmp/slurm_local}
RUN=$BASE/var/run

declare -A EXE=([slurmd]=/usr/sbin/slurmd [slurmctld]=/usr/sbin/slurmctld [slurmdbd]=/usr/sbin/slurmdbd
                [mariadbd]=/usr/sbin/mariadbd [munged]=/usr/sbin/munged)

ours() {  # prints PID if the recorded PID for $1 is alive and is the expected binary
  local f=$RUN/$1.fgpid pid
  [ -s "$f" ] || return 1
  pid=$(cat "$f")
  [ -d "/proc/$pid" ] && [ "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" = "$(readlink -f "${EXE[$1]}")" ] && echo "$pid"
}

alive() { [ -r "/proc/$1/stat" ] && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }

# cancel jobs of our cluster so no slurmstepd/job processes are left behind
if ours slurmctld >/dev/null; then
  ids=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')
  if [ -n "${ids// }" ]; then
    echo "[stop_slurm] cancelling jobs: $ids"
    scancel $ids 2>/dev/null
    for _ in $(seq 50); do [ -z "$(squeue -h -t R,CG -o %A 2>/dev/null)" ] && break; sleep 0.2; done
  fi
fi

for name in slurmd slurmctld slurmdbd mariadbd munged; do
  pid=$(ours "$name") || { rm -f "$RUN/$name.fgpid"; continue; }
  echo "[stop_slurm] stopping $name pid $pid"
  kill -TERM "$pid"
  for _ in $(seq 100); do alive "$pid" || break; sleep 0.1; done
  if alive "$pid"; then echo "[stop_slurm] $name pid $pid still alive, SIGKILL"; kill -KILL "$pid"; fi
  rm -f "$RUN/$name.fgpid"
done
echo "[stop_slurm] done"
