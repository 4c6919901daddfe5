"""How a run slows down when a second identical run shares the machine, per thread setting (run on
demand, not a test).

For each configuration (a thread count, optionally with environment variables), starts one run
alone, then two identical runs at once, each in its own fresh cache: ``eebench run --method
threshold`` (feature pass, then the shared IM stage and the threshold fit) followed by ``eebench run
--method jei`` on the same cache (the JEI-DNN fit). Reads each stage's seconds from the run records
and prints, per configuration and stage, the time alone, beside a second run, the slowdown, and the
wall time of the pair::

    python benchmarks/contention.py --data-dir ../shared/data --weights-dir ../shared/weights \\
        --configs 2 1 "2:OMP_WAIT_POLICY=PASSIVE"

A configuration ``N`` runs with ``--threads N``; ``default`` with none (eebench's default);
``:KEY=VALUE,...`` adds environment variables. The setting is CIFAR-10 / ResNet-56 (published
weights) with ``dataset.train_fraction`` 0.3 by default (15,000 train images; 25,000 images in all
through the backbone), the setting the issue measured.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EEBENCH = [sys.executable, "-m", "eebench.cli"]
STAGES = ("feature pass", "threshold: IM stage + fit", "JEI-DNN fit")


def run_chain(work: Path, threads: str, env: dict[str, str], args: argparse.Namespace) -> subprocess.Popen:
    """One chain (threshold run, then JEI-DNN run on the same cache) as a background shell."""
    common = ["--dataset", "cifar10", "--backbone", "cifar_resnet56", "--set", "weights=published",
              "--set", f"dataset.train_fraction={args.train_fraction}", "--cache-dir", str(work / "cache"),
              "--out", str(work / "runs")]
    for flag in ("data_dir", "weights_dir"):
        if getattr(args, flag):
            common += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    if threads != "default":
        common += ["--threads", threads]
    cmds = [EEBENCH + ["run", "--method", m] + common for m in ("threshold", "jei")]
    script = " && ".join(" ".join(f"'{c}'" for c in cmd) for cmd in cmds)
    full_env = {**os.environ, "TQDM_DISABLE": "1", **env}
    full_env.pop("EEBENCH_THREADS", None)
    return subprocess.Popen(["bash", "-c", script], env=full_env, stdout=subprocess.DEVNULL,
                            stderr=open(work / "log.txt", "w"))


def stage_seconds(work: Path) -> dict[str, float]:
    records = {json.loads(p.read_text())["config"]["method"]: json.loads(p.read_text())
               for p in (work / "runs").glob("*/record.json")}
    thr, jei = records["threshold"]["timings"], records["jei"]["timings"]
    return {STAGES[0]: thr["features"], STAGES[1]: thr["fit"], STAGES[2]: jei["fit"],
            "threads": records["threshold"]["torch_threads"]}


def measure(config: str, copies: int, args: argparse.Namespace) -> tuple[list[dict[str, float]], float]:
    threads, _, extra = config.partition(":")
    env = dict(kv.split("=", 1) for kv in extra.split(",") if kv)
    root = Path(tempfile.mkdtemp(prefix="contention-", dir=args.tmp))
    works = [root / f"copy{i}" for i in range(copies)]
    for w in works:
        w.mkdir()
    t0 = time.perf_counter()
    procs = [run_chain(w, threads, env, args) for w in works]
    for p, w in zip(procs, works):
        if p.wait() != 0:
            sys.exit(f"run failed; log: {w / 'log.txt'}")
    wall = time.perf_counter() - t0
    out = [stage_seconds(w) for w in works]
    shutil.rmtree(root)
    return out, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", nargs="+", default=["default", "1"])
    ap.add_argument("--data-dir", type=Path)
    ap.add_argument("--weights-dir", type=Path)
    ap.add_argument("--train-fraction", type=float, default=0.3)
    ap.add_argument("--tmp", type=Path, help="where the temporary caches go (default: the system's)")
    args = ap.parse_args()
    print(f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f} at the start", flush=True)
    rows = []
    for config in args.configs:
        alone, wall1 = measure(config, 1, args)
        load = os.getloadavg()[0]
        pair, wall2 = measure(config, 2, args)
        print(f"{config}: alone {wall1:.0f} s, pair {wall2:.0f} s wall (torch threads {alone[0]['threads']}; "
              f"load {load:.2f} after the run alone)", flush=True)
        for stage in STAGES:
            a = alone[0][stage]
            b = sum(p[stage] for p in pair) / 2
            rows.append((config, stage, a, b, b / a))
        rows.append((config, "whole chain (wall)", wall1, wall2, wall2 / wall1))
    print("\n| threads | stage | alone s | beside a second run s | slowdown |\n|---|---|---:|---:|---:|")
    for config, stage, a, b, r in rows:
        print(f"| {config} | {stage} | {a:.1f} | {b:.1f} | {r:.2f}x |")


if __name__ == "__main__":
    main()
