#!/usr/bin/env bash
# A copy of ../shared/tools/slurm-local/start.sh (carried here so users can try the cluster path).
# Start a real single-node, loopback-only SLURM cluster on Debian 12 without systemd.
# Idempotent: installs missing packages, (re)writes configs, starts only the daemons
# that are not already running (tracked by PID files under $VAR/run), waits for node idle.
#
# Env knobs:
#   SLURM_LOCAL_BASE=/tmp/slurm_local   where state/logs/pids live
#   SLURM_LOCAL_ACCOUNTING=1            1: slurmdbd + MariaDB (real `sacct`, needed for
#                                        submitit job.state / cancelled-job detection)
#                                       0: accounting_storage/none (faster, fewer pkgs)
#   SLURM_LOCAL_CLEAN=0                 1: wipe slurm state + accounting DB before start
#   SLURM_LOCAL_PARTITION=debug
#   SLURM_LOCAL_{CTLD,SLURMD,DBD,DB}_PORT=6817/6818/6819/13306
set -euo pipefail

BASE=${SLURM_LOCAL_BASE:-/tmp/slurm_local}
VAR=$BASE/var
RUN=$VAR/run
LOG=$VAR/log
ACCOUNTING=${SLURM_LOCAL_ACCOUNTING:-1}
CLEAN=${SLURM_LOCAL_CLEAN:-0}
PARTITION=${SLURM_LOCAL_PARTITION:-debug}
CTLD_PORT=${SLURM_LOCAL_CTLD_PORT:-6817}
SLURMD_PORT=${SLURM_LOCAL_SLURMD_PORT:-6818}
DBD_PORT=${SLURM_LOCAL_DBD_PORT:-6819}
DB_PORT=${SLURM_LOCAL_DB_PORT:-13306}
DB_PASS=slurmpw
CLUSTER=localci
HOST=$(hostname -s)

T0=$(date +%s%N)
log() { local ms=$(( ($(date +%s%N) - T0) / 1000000 )); printf '[start_slurm +%d.%03ds] %s\n' $((ms/1000)) $((ms%1000)) "$*"; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- 1. packages
pkgs=(munge slurmctld slurmd slurm-client)
[ "$ACCOUNTING" = 1 ] && pkgs+=(slurmdbd mariadb-server)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  # Never let package postinst scripts start daemons we would not track.
  tmp_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; tmp_policy=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ "$tmp_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  log "packages installed"
fi

# ---------------------------------------------------------------- helpers
mkdir -p "$RUN" "$LOG" "$VAR/state" "$VAR/spool"
# is_ours NAME EXE: our recorded PID for NAME is alive and is EXE
is_ours() {
  local f=$RUN/$1.fgpid pid
  [ -s "$f" ] || return 1
  pid=$(cat "$f")
  [ -d "/proc/$pid" ] && [ "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" = "$(readlink -f "$2")" ]
}
listening() {  # listening TCP port on any local address?
  local hex; hex=$(printf ':%04X' "$1")
  awk -v p="$hex" '$4=="0A" && substr($2, length($2)-4)==p {f=1} END{exit !f}' /proc/net/tcp /proc/net/tcp6 2>/dev/null
}
not_listening() { ! listening "$1"; }
wait_for() {  # wait_for SECONDS DESC CMD...
  local t=$1 d=$2; shift 2
  local end=$(( $(date +%s) + t ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$end" ] || die "timeout waiting for $d"
    sleep 0.1
  done
}
start_bg() {  # start_bg NAME CMD... : run in foreground mode, in background, record PID
  local name=$1; shift
  nohup "$@" >>"$LOG/$name.out" 2>&1 </dev/null &
  echo $! > "$RUN/$name.fgpid"
}

if [ "$CLEAN" = 1 ]; then
  for d in slurmd slurmctld slurmdbd mariadbd; do
    is_ours "$d" "/usr/sbin/$d" && die "$d is running; run stop.sh before SLURM_LOCAL_CLEAN=1"
  done
  log "cleaning state"
  rm -rf "$VAR/state" "$VAR/spool" "$VAR/mysql"
  mkdir -p "$VAR/state" "$VAR/spool"
fi

# ---------------------------------------------------------------- 2. munge
if [ ! -s /etc/munge/munge.key ]; then
  log "creating munge key"
  mkdir -p /etc/munge
  mungekey --create --keyfile=/etc/munge/munge.key
fi
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge
chmod 700 /etc/munge; chmod 600 /etc/munge/munge.key
mkdir -p /run/munge; chown munge:munge /run/munge; chmod 755 /run/munge   # /run is tmpfs: not created without systemd
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  log "munged already answering (ours: $(is_ours munged /usr/sbin/munged && echo yes || echo no))"
else
  log "starting munged"
  start_bg munged setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged -F
  wait_for 10 munged sh -c 'munge -n | unmunge'
fi

# ---------------------------------------------------------------- 3. configs
CPU_LINE=$(slurmd -C | head -1)                       # NodeName=... CPUs= Boards= ... RealMemory=
REALMEM=$(echo "$CPU_LINE" | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
MEM=$(( REALMEM * 90 / 100 ))
NODE_LINE=$(echo "$CPU_LINE" | sed -e "s/^NodeName=[^ ]*/NodeName=$HOST NodeAddr=127.0.0.1/" -e "s/RealMemory=[0-9]*/RealMemory=$MEM/")
if [ "$ACCOUNTING" = 1 ]; then
  ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT"
else
  ACCT="AccountingStorageType=accounting_storage/none"
fi
mkdir -p /etc/slurm
cat > /etc/slurm/slurm.conf.new <<EOF
# generated by slurm-local/start.sh
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
StateSaveLocation=$VAR/state
SlurmdSpoolDir=$VAR/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
MailProg=/bin/true
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
$ACCT
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
$NODE_LINE State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
mv /etc/slurm/slurm.conf.new /etc/slurm/slurm.conf
if [ "$ACCOUNTING" = 1 ]; then
  umask 077
  cat > /etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=$HOST
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
  umask 022
  chmod 600 /etc/slurm/slurmdbd.conf   # slurmdbd refuses a world-readable file
fi

# ---------------------------------------------------------------- 4. MariaDB + slurmdbd
if [ "$ACCOUNTING" = 1 ]; then
  SOCK=$VAR/mysql/mysqld.sock
  if is_ours mariadbd /usr/sbin/mariadbd; then
    log "mariadbd already running"
  else
    listening "$DB_PORT" && die "port $DB_PORT busy (not our mariadbd)"
    if [ ! -d "$VAR/mysql/mysql" ]; then
      log "initialising MariaDB datadir"
      rm -rf "$VAR/mysql"; mkdir -p "$VAR/mysql"; chown mysql:mysql "$VAR/mysql"
      mariadb-install-db --no-defaults --datadir="$VAR/mysql" --user=mysql \
        --auth-root-authentication-method=normal --skip-test-db >"$LOG/mariadb-install.log" 2>&1
    fi
    log "starting mariadbd on 127.0.0.1:$DB_PORT"
    start_bg mariadbd /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$VAR/mysql" \
      --bind-address=127.0.0.1 --port="$DB_PORT" --socket="$SOCK" --pid-file="$VAR/mysql/mysqld.pid" \
      --skip-name-resolve --log-error="$LOG/mariadb.err" \
      --innodb-buffer-pool-size=256M --innodb-lock-wait-timeout=900
    wait_for 30 mariadbd mariadb-admin --no-defaults --socket="$SOCK" -uroot ping
  fi
  mariadb --no-defaults --socket="$SOCK" -uroot -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
  if is_ours slurmdbd /usr/sbin/slurmdbd; then
    log "slurmdbd already running"
  else
    listening "$DBD_PORT" && die "port $DBD_PORT busy (not our slurmdbd)"
    log "starting slurmdbd"
    start_bg slurmdbd /usr/sbin/slurmdbd -D
    wait_for 30 slurmdbd listening "$DBD_PORT"
  fi
fi

# ---------------------------------------------------------------- 5. slurmctld + slurmd
want_acct=$(echo "$ACCT" | sed -n 's/^AccountingStorageType=//p')
if is_ours slurmctld /usr/sbin/slurmctld; then
  have_acct=$(scontrol show config 2>/dev/null | awk '$1=="AccountingStorageType"{print $3}')
  if [ "$have_acct" != "$want_acct" ]; then   # plugin change needs a restart, not reconfigure
    pid=$(cat "$RUN/slurmctld.fgpid")
    log "accounting mode changed ($have_acct -> $want_acct): restarting slurmctld pid $pid"
    kill -TERM "$pid"
    for _ in $(seq 100); do
      [ -r "/proc/$pid/stat" ] && [ "$(awk '{print $3}' "/proc/$pid/stat")" != Z ] || break; sleep 0.1
    done
    wait_for 15 "slurmctld port release" not_listening "$CTLD_PORT"
  fi
fi
if is_ours slurmctld /usr/sbin/slurmctld; then
  log "slurmctld already running; scontrol reconfigure"
  scontrol reconfigure || true
else
  listening "$CTLD_PORT" && die "port $CTLD_PORT busy (not our slurmctld)"
  log "starting slurmctld"
  start_bg slurmctld /usr/sbin/slurmctld -D -i
  wait_for 30 slurmctld sh -c 'scontrol ping | grep -q UP'
fi
if is_ours slurmd /usr/sbin/slurmd; then
  log "slurmd already running"
else
  listening "$SLURMD_PORT" && die "port $SLURMD_PORT busy (not our slurmd)"
  log "starting slurmd"
  start_bg slurmd /usr/sbin/slurmd -D -N "$HOST"
fi

# ---------------------------------------------------------------- 6. wait for idle node
end=$(( $(date +%s) + 60 ))
while :; do
  st=$(sinfo -h -n "$HOST" -o %T 2>/dev/null || true)
  case "$st" in
    idle|mixed|allocated|completing) break ;;
    drain*|down*|fail*) scontrol update nodename="$HOST" state=resume 2>/dev/null || true ;;
  esac
  [ "$(date +%s)" -lt "$end" ] || die "node $HOST not idle after 60s (state '$st'); see $LOG"
  sleep 0.2
done
if [ "$ACCOUNTING" = 1 ]; then
  wait_for 30 "cluster registration in slurmdbd" sh -c "sacctmgr -n -P list cluster format=cluster | grep -qx $CLUSTER"
fi
log "cluster up: node $HOST is $st; partition $PARTITION; accounting=$ACCOUNTING"
sinfo
