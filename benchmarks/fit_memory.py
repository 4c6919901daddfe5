"""Peak memory of a method fit against the number of train samples N, on a synthetic feature cache of
ImageNet's shape through T2T-ViT-14 (13 IM inputs × 384 float16, C = 1000), scaled down in N
(run on demand; the README quotes it). Target (issue "On a GPU and at ImageNet scale"): ≤ 4 GB at
N = 1.28 M, i.e. peak memory that does not grow with N beyond what the method itself needs.

Each N runs in its own process (peak RSS is per process): random train features written as a feature
pass writes them (shards of ``SHARD_ROWS`` rows, in a temporary cache under ``$EEBENCH_CACHE`` or
``/tmp``) and read back as a run reads a split too large for memory (by rows, from the shards), val
and policy fixed at 5,000 rows each in memory, the shared IM stage for ``--im-epochs`` epoch(s), then
the method's fit::

    python benchmarks/fit_memory.py --n 20000,80000,320000 [--method threshold] [--im-epochs 1]
        [--set method.epochs=1] [--in-memory]

Prints N, the train split's size on disk, the process's RSS before the fit and its peak (loading the
cache, its checks and the fit), the seconds of all three, and the straight line through the peaks,
extrapolated to N = 1.28 M. ``--in-memory`` loads the split into memory instead (the contrast).
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


def one(n: int, method: str, im_epochs: int, sets: list[str], in_memory: bool) -> dict:
    from eebench.harness.config import resolve
    from eebench.harness.costs import CostProfile
    from eebench.harness.features import SHARD_ROWS, FeatureCache, SplitFeatures, _save, shard_name
    from eebench.harness.im_stage import IMStage, im_schedule
    from eebench.harness.method import ExitTask, load_methods

    g = torch.Generator().manual_seed(0)

    def split(rows: int) -> SplitFeatures:
        return SplitFeatures(torch.randn(rows, EXITS * DIM, generator=g).half(), [DIM] * EXITS,
                             torch.randn(rows, CLASSES, generator=g), torch.randint(0, CLASSES, (rows,), generator=g))

    policy, val = split(VAL), split(VAL)
    cfg = resolve(method, "digits", sets=[f"im.epochs={im_epochs}", *sets])
    costs = CostProfile([100] * (EXITS + 1), [10] * EXITS)
    make = lambda: nn.ModuleList(nn.Linear(DIM, CLASSES) for _ in range(EXITS))  # noqa: E731
    with tempfile.TemporaryDirectory(dir=os.environ.get("EEBENCH_CACHE")) as tmp:
        cache = FeatureCache(Path(tmp))   # the train split written as the feature pass writes it, shard by shard
        folder = cache.path("synthetic")
        folder.mkdir()
        shards = -(-n // SHARD_ROWS)
        for i in range(shards):
            _save(split(min(SHARD_ROWS, n - i * SHARD_ROWS)), folder / shard_name("train", i))
        (folder / "meta.json").write_text(json.dumps({"splits": ["train"], "rows": {"train": n},
                                                      "shards": {"train": shards}, "num_exits": EXITS + 1}))
        disk_gib = sum(p.stat().st_size for p in folder.iterdir()) / 2 ** 30
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
        t0 = time.perf_counter()
        train = cache.load("synthetic", in_memory_bytes=1 << 50 if in_memory else 0)[0]["train"]
        stage = IMStage(Path(tmp), f"synthetic-{n}", make, train, val, cfg.im_params, 0)
        task = ExitTask(train, policy, val, CLASSES, costs, lambda k: nn.Linear(DIM, CLASSES), stage,
                        im_schedule(cfg.im_params))
        load_methods().get(method).fit(task, cfg.method_params, 0)
        seconds = time.perf_counter() - t0
    return {"n": n, "disk_gib": disk_gib, "on_disk": train.on_disk, "before_fit_gib": before,
            "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, "fit_s": seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", default="20000,40000,80000", help="train sizes, comma-separated")
    p.add_argument("--method", default="threshold")
    p.add_argument("--im-epochs", type=int, default=1)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a run parameter, e.g. method.epochs=1 (repeatable)")
    p.add_argument("--in-memory", action="store_true", help="load the train split into memory (the contrast)")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.method, args.im_epochs, args.set, args.in_memory)))
        return
    rows = []
    print(f"{args.method} {' '.join(args.set)}, IM stage {args.im_epochs} epoch(s), {torch.get_num_threads()} threads, "
          f"load {os.getloadavg()[0]:.2f}; {EXITS} IM inputs x {DIM} float16, C = {CLASSES}, val/policy {VAL} rows "
          f"each; train {'in memory' if args.in_memory else 'read from its shards by rows'}")
    print(f"{'N':>9} {'train on disk GiB':>18} {'RSS before fit':>15} {'peak RSS GiB':>13} {'fit s':>7}")
    for n in (int(v) for v in args.n.split(",")):
        flags = [f"--set={v}" for v in args.set] + (["--in-memory"] if args.in_memory else [])
        out = subprocess.run([sys.executable, __file__, "--one", str(n), "--method", args.method,
                              "--im-epochs", str(args.im_epochs), *flags], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(f"{r['n']:>9} {r['disk_gib']:>18.2f} {r['before_fit_gib']:>15.2f} {r['peak_gib']:>13.2f} "
              f"{r['fit_s']:>7.1f}", flush=True)
    if len(rows) > 1:
        slope, icpt = np.polyfit([r["n"] for r in rows], [r["peak_gib"] for r in rows], 1)
        print(f"peak RSS ≈ {icpt:.2f} GiB {'+' if slope >= 0 else '-'} {abs(slope) * 1e6:.2f} GiB per million samples: "
              f"{icpt + slope * 1.28e6:.1f} GiB at N = 1.28 M (target ≤ 4 GB)")


if __name__ == "__main__":
    main()
