"""How long the methods' fits take against the feature pass that built their cache (run on demand,
not a test).

For a setting: times one backbone pass over the four splits (building the feature cache, or, when
it exists, a second pass that writes nothing), then fits each method at each seed on the cached
features and times the fit. The shared IM stage is trained afresh for each seed (in a temporary
cache), so its cost is counted once per seed, in the first method that uses it. Prints the table,
Σ fits / feature pass per seed, and the process's peak resident memory::

    python benchmarks/fits.py --dataset cifar10 --backbone cifar_resnet56 --data-dir ../shared/data \\
        --weights-dir ../shared/weights [--seeds 0] [--methods threshold,boosted,...]
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from eebench.harness.config import resolve
from eebench.data.spec import SPLITS
from eebench.harness.features import extract
from eebench.harness.im_stage import IMStage, im_schedule
from eebench.harness.method import ExitTask, load_methods
from eebench.harness.runner import RunOptions, Timer, carve_policy, prepare_features
from eebench.backbones import BACKBONES

ALL = ("threshold", "boosted", "l2w", "eenet", "diffbranch", "jei")


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--backbone")
    ap.add_argument("--methods", default=",".join(ALL))
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--data-dir", type=Path)
    ap.add_argument("--weights-dir", type=Path)
    ap.add_argument("--cache-dir", type=Path)
    args = ap.parse_args()
    names = args.methods.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    options = RunOptions(args.data_dir, args.weights_dir, args.cache_dir)
    config = resolve(names[0], args.dataset, args.backbone, seeds[0])
    timer = Timer()
    prep = prepare_features(config.dataset, config.backbone, config.dataset_params, options, timer, config.weights)
    if prep.reused:                      # time a pass anyway (nothing written)
        spec = BACKBONES.get(config.backbone)
        model = prep.adapter.model
        t0 = time.perf_counter()
        for s in SPLITS:
            extract(prep.adapter, spec.pipeline.dataset(prep.splits, s, model), options.batch_size,
                    options.num_workers, desc=f"features {s}", collate_fn=spec.pipeline.collate_fn)
        feature_s = time.perf_counter() - t0
    else:
        feature_s = timer.seconds["features"]
    print(f"{config.dataset} / {config.backbone}: feature pass over {sum(len(prep.splits.indices[s][1]) for s in SPLITS)} "
          f"samples {feature_s:.1f} s ({'cache reused, timed again' if prep.reused else 'cache built'}); "
          f"torch threads {torch.get_num_threads()}", flush=True)
    f, C = prep.features, prep.splits.spec.num_classes
    methods = load_methods()
    totals = {}
    print(f"{'method':<11} {'seed':>4} {'fit s':>7}  IM stage")
    for seed in seeds:
        totals[seed] = 0.0
        with tempfile.TemporaryDirectory() as tmp:
            for name in names:
                cfg = resolve(name, args.dataset, args.backbone, seed)
                policy, val, _ = carve_policy(f["train"], f["val"], prep.splits.indices["val"], cfg.dataset_params)
                make = lambda: nn.ModuleList(prep.adapter.make_im(k, C) for k in range(1, prep.costs.num_exits))  # noqa: E731
                stage = IMStage(Path(tmp), prep.key, make, f["train"], val, cfg.im_params, seed)
                task = ExitTask(f["train"], policy, val, C, prep.costs, lambda k: prep.adapter.make_im(k, C), stage,
                                im_schedule(cfg.im_params))
                torch.manual_seed(seed)
                t0 = time.perf_counter()
                methods.get(name).fit(task, cfg.method_params, seed)
                dt = time.perf_counter() - t0
                totals[seed] += dt
                used = "" if stage.info is None else ("reused" if stage.info["reused"] else
                                                      f"trained here ({stage.info['epochs']} epochs)")
                print(f"{name:<11} {seed:>4} {dt:7.1f}  {used}", flush=True)
    for seed, total in totals.items():
        print(f"seed {seed}: Σ fits {total:.1f} s, Σ fits / feature pass = {total / feature_s:.2f}")
    print(f"peak resident memory of this process: {peak_rss_gib():.2f} GiB")


if __name__ == "__main__":
    main()
