"""Per-run overhead of the SLURM path against inline execution, on the same grid.

Runs GRID three ways into fresh output folders (sharing one feature cache, warmed first so no
launcher pays for the digits ViT or the backbone pass), and prints:

- wall time of each sweep (inline: one process, one run after another; local: submitit
  subprocesses; slurm: one feature job, then a job array);
- per run: the run's own time (``timings.total`` of its record: data, backbone, features, fit,
  predict, metrics) and, for SLURM, the job's elapsed time from ``sacct`` and its wait in the
  queue (submit to start). Overhead per run = elapsed − own time: the job's Python start-up and
  imports (torch, timm, datasets), submitit's pickles and Slurm's step launch.

Usage (with a cluster up, e.g. slurm/start-local-cluster.sh)::

    python slurm/overhead.py [--grid experiments/smoke.yaml] [--profile slurm/local.yaml] [--max-parallel N]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EEBENCH = Path(sys.executable).parent / "eebench"


def sweep(grid: Path, out: Path, *args: str) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([str(EEBENCH), "sweep", str(grid), "--out", str(out), *args], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"sweep {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    print("   ", proc.stdout.strip().splitlines()[0])
    return wall


def warm(grid: Path) -> None:
    """Build (or find) the grid's feature caches in this process, as its feature jobs would."""
    from eebench.harness.runner import RunOptions
    from eebench.sweep.grids import expand, load_grid
    from eebench.sweep.tasks import FeatureStage, FeatureTask

    for stage in {FeatureStage.of(c) for c in expand(load_grid(grid))}:
        FeatureTask(RunOptions())(stage)


def own_times(out: Path) -> dict[str, float]:
    return {p.parent.name: json.loads(p.read_text())["timings"]["total"] for p in out.glob("*/record.json")}


def sacct(job_ids: list[str]) -> dict[str, dict[str, str]]:
    """Submit, start and end time of each job or array task (arrays queried by their base id)."""
    bases = sorted({j.split("_")[0] for j in job_ids})
    lines = subprocess.run(["sacct", "-n", "-X", "-P", "-j", ",".join(bases), "-o", "JobID,Submit,Start,End"],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    rows = (ln.split("|") for ln in lines if ln)
    return {f[0]: {"submit": f[1], "start": f[2], "end": f[3]} for f in rows if "Unknown" not in f}


def seconds(a: str, b: str) -> float:
    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--grid", type=Path, default=ROOT / "experiments" / "smoke.yaml")
    p.add_argument("--profile", type=Path, default=ROOT / "slurm" / "local.yaml")
    p.add_argument("--max-parallel", type=int, help="array parallelism / local subprocesses (default: as the launcher)")
    p.add_argument("--launchers", default="inline,local,slurm", help="which to time (default inline,local,slurm)")
    args = p.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    par = ["--max-parallel", str(args.max_parallel)] if args.max_parallel else []
    with tempfile.TemporaryDirectory(prefix="eebench-overhead-") as tmp:
        tmp = Path(tmp)
        print(f"grid {args.grid.name}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}")
        print("warming the feature cache (not timed) ...")
        warm(args.grid)
        walls = {}
        which = args.launchers.split(",")
        print("inline ...")
        walls["inline"] = sweep(args.grid, tmp / "inline", "--launcher", "inline")
        if "local" in which:
            print("local ...")
            walls["local"] = sweep(args.grid, tmp / "local", "--launcher", "local", *par)
        if "slurm" in which and shutil.which("sbatch"):
            print("slurm ...")
            walls["slurm"] = sweep(args.grid, tmp / "slurm", "--launcher", "slurm", "--profile", str(args.profile),
                                   "--log-dir", str(tmp / "slurm-logs"), *par)
        inline = own_times(tmp / "inline")
        n = len(inline)
        print(f"\n{n} runs; run time inside the run (record timings.total): "
              f"inline mean {statistics.mean(inline.values()):.2f} s")
        for name, wall in walls.items():
            print(f"  {name:<6} sweep wall {wall:7.1f} s  ({wall / n:5.2f} s per run)")
        if "slurm" in walls:
            manifest = json.loads((tmp / "slurm-logs" / "sweep.json").read_text())
            runs = [j for j in manifest["jobs"] if j["kind"] == "runs"]
            feature = [j for j in manifest["jobs"] if j["kind"] == "features"]
            info = sacct([j["job_id"] for j in manifest["jobs"]])
            own = own_times(tmp / "slurm")
            runs = [j for j in runs if j["job_id"] in info]
            elapsed = [seconds(info[j["job_id"]]["start"], info[j["job_id"]]["end"]) for j in runs]
            waits = [seconds(info[j["job_id"]]["submit"], info[j["job_id"]]["start"]) for j in runs]
            overhead = [e - own[j["runs"][0]] for e, j in zip(elapsed, runs) if len(j["runs"]) == 1]
            f = info[feature[0]["job_id"]] if feature else None
            if f:
                print(f"  slurm feature job: elapsed {seconds(f['start'], f['end']):.0f} s (cache reused)")
            print(f"  slurm run task: elapsed mean {statistics.mean(elapsed):.1f} s, run itself "
                  f"{statistics.mean(own.values()):.1f} s; queue wait mean {statistics.mean(waits):.1f} s")
            if overhead:
                print(f"  SLURM overhead per run (task elapsed − run time): mean {statistics.mean(overhead):.1f} s, "
                      f"min {min(overhead):.1f} s, max {max(overhead):.1f} s")
            print(f"  sweep wall, slurm − inline: {walls['slurm'] - walls['inline']:+.1f} s "
                  f"({(walls['slurm'] - walls['inline']) / n:+.2f} s per run)")


if __name__ == "__main__":
    main()
