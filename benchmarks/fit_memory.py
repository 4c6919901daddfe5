"""Peak memory of a method fit against the number of train samples N, on a synthetic feature cache of
ImageNet's shape through T2T-ViT-14 (13 IM inputs × 384 float16, C = 1000), scaled down in N
(run on demand; the README quotes it). Target (issue "On a GPU and at ImageNet scale"): ≤ 4 GB at
N = 1.28 M, i.e. peak memory that does not grow with N beyond what the method itself needs.

Each N runs in its own process (peak RSS is per process): random features, val and policy fixed at
5,000 rows each, the shared IM stage for ``--im-epochs`` epoch(s), then the method's fit::

    python benchmarks/fit_memory.py --n 20000,40000,80000 [--method threshold] [--im-epochs 1]

Prints N, the train split's size in memory (float16 IM inputs and float32 logits, as the cache
holds them), the process's RSS before the fit and its peak, the fit's seconds, and the straight
line through the peaks, extrapolated to N = 1.28 M.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

EXITS, DIM, CLASSES, VAL = 13, 384, 1000, 5000


def one(n: int, method: str, im_epochs: int) -> dict:
    from eebench.config import resolve
    from eebench.costs import CostProfile
    from eebench.features import SplitFeatures
    from eebench.im_stage import IMStage, im_schedule
    from eebench.method import ExitTask, load_methods

    g = torch.Generator().manual_seed(0)

    def split(rows: int) -> SplitFeatures:
        """Random features built in place, 10,000 rows at a time (no float32 copy of the split)."""
        stacked = torch.empty(rows, EXITS * DIM, dtype=torch.float16)
        logits = torch.empty(rows, CLASSES)
        for start in range(0, rows, 10000):
            stacked[start:start + 10000] = torch.randn(min(10000, rows - start), EXITS * DIM, generator=g)
            logits[start:start + 10000] = torch.randn(min(10000, rows - start), CLASSES, generator=g)
        out = SplitFeatures([], logits, torch.randint(0, CLASSES, (rows,), generator=g))
        out.stacked, out.dims = stacked, [DIM] * EXITS
        return out

    train, policy, val = split(n), split(VAL), split(VAL)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    cfg = resolve(method, "digits", sets=[f"im.epochs={im_epochs}"])
    costs = CostProfile([100] * (EXITS + 1), [10] * EXITS)
    make = lambda: nn.ModuleList(nn.Linear(DIM, CLASSES) for _ in range(EXITS))  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        stage = IMStage(Path(tmp), f"synthetic-{n}", make, train, val, cfg.im_params, 0)
        task = ExitTask(train, policy, val, CLASSES, costs, lambda k: nn.Linear(DIM, CLASSES), stage,
                        im_schedule(cfg.im_params))
        t0 = time.perf_counter()
        load_methods().get(method).fit(task, cfg.method_params, 0)
        seconds = time.perf_counter() - t0
    return {"n": n, "features_gib": (train.stacked.numel() * 2 + train.logits.numel() * 4) / 2 ** 30, "before_fit_gib": before,
            "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, "fit_s": seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", default="20000,40000,80000", help="train sizes, comma-separated")
    p.add_argument("--method", default="threshold")
    p.add_argument("--im-epochs", type=int, default=1)
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.method, args.im_epochs)))
        return
    rows = []
    print(f"{args.method}, IM stage {args.im_epochs} epoch(s), {torch.get_num_threads()} threads, load "
          f"{os.getloadavg()[0]:.2f}; {EXITS} IM inputs x {DIM} float16, C = {CLASSES}, val/policy {VAL} rows each")
    print(f"{'N':>9} {'train GiB':>10} {'RSS before fit':>15} {'peak RSS GiB':>13} {'fit s':>7}")
    for n in (int(v) for v in args.n.split(",")):
        out = subprocess.run([sys.executable, __file__, "--one", str(n), "--method", args.method,
                              "--im-epochs", str(args.im_epochs)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(f"{r['n']:>9} {r['features_gib']:>10.2f} {r['before_fit_gib']:>15.2f} {r['peak_gib']:>13.2f} "
              f"{r['fit_s']:>7.1f}", flush=True)
    if len(rows) > 1:
        slope, icpt = np.polyfit([r["n"] for r in rows], [r["peak_gib"] for r in rows], 1)
        print(f"peak RSS ≈ {icpt:.2f} GiB + {slope * 1e6:.2f} GiB per million samples: "
              f"{icpt + slope * 1.28e6:.1f} GiB at N = 1.28 M (target ≤ 4 GB)")


if __name__ == "__main__":
    main()
