"""Where should exit policies learn? Fit methods with their exit policy (thresholds, gates,
schedulers) learning on ``train`` or on the policy half of ``val``, and compare, per method, the
test accuracy of the point chosen on the selection half of ``val`` at a few budgets.

The IMs learn on ``train`` in both arms and every choice is made on the same selection half, so
the arms differ only in the data the exit policy sees. Run on demand (not a test)::

    python benchmarks/policy_data.py --dataset cifar10 --backbone cifar_resnet56 \\
        --data-dir ../shared/data --weights-dir ../shared/weights --methods jei,eenet,diffbranch --seeds 0,1,2
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from eebench import paths
from eebench.harness.config import resolve
from eebench.harness.im_stage import IMStage, im_schedule
from eebench.harness.method import ExitTask, load_methods
from eebench.harness.runner import RunOptions, carve_policy, prepare_features
from eebench.report.selection import select

BUDGETS = (0.25, 0.5, 0.75)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--backbone")
    ap.add_argument("--methods", default="jei,eenet,diffbranch")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--data-dir", type=Path)
    ap.add_argument("--weights-dir", type=Path)
    ap.add_argument("--cache-dir", type=Path)
    args = ap.parse_args()
    methods = load_methods()
    print(f"{'method':<11} {'seed':>4} {'policy on':<9} " + " ".join(f"acc@{b:.2f} (cost)" for b in BUDGETS))
    rows = []
    for name in args.methods.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            config = resolve(name, args.dataset, args.backbone, seed)
            prep = prepare_features(config.dataset, config.backbone, config.dataset_params,
                                    RunOptions(args.data_dir, args.weights_dir, args.cache_dir), weights=config.weights)
            f, C = prep.features, prep.splits.spec.num_classes
            policy, val, _ = carve_policy(f["train"], f["val"], prep.splits.indices["val"], config.dataset_params)
            make = lambda: nn.ModuleList(prep.adapter.make_im(k, C) for k in range(1, prep.costs.num_exits))  # noqa: E731
            stage = IMStage(paths.cache_dir(args.cache_dir), prep.key, make, f["train"], val, config.im_params, seed)
            for arm, data in (("train", f["train"]), ("val half", policy)):
                task = ExitTask(f["train"], data, val, C, prep.costs, lambda k: prep.adapter.make_im(k, C), stage,
                                im_schedule(config.im_params))
                torch.manual_seed(seed)
                t0 = time.perf_counter()
                fitted = methods.get(name).fit(task, config.method_params, seed)
                fit_s = time.perf_counter() - t0
                on_val, on_test = fitted.predict(val), fitted.predict(f["test"])
                costs = prep.costs.exit_costs(on_test[0].gate_muladds)
                v_cost = np.array([costs[p.exit_index].mean() for p in on_val])
                v_acc = np.array([(p.answered_probs.argmax(1) == val.labels).float().mean().item() for p in on_val])
                t_cost = np.array([costs[p.exit_index].mean() for p in on_test])
                t_acc = np.array([(p.answered_probs.argmax(1) == f["test"].labels).float().mean().item()
                                  for p in on_test])
                picks = select(v_cost, v_acc, BUDGETS)
                cells = [f"{100 * t_acc[i]:6.2f} ({t_cost[i]:.3f})" if i >= 0 else f"{'–':>6} {'':7}" for i in picks]
                print(f"{name:<11} {seed:>4} {arm:<9} " + " ".join(cells) + f"   fit {fit_s:.1f} s", flush=True)
                rows.append((name, arm, [100 * t_acc[i] if i >= 0 else np.nan for i in picks]))
    print("\nmean over seeds (test accuracy % of the point chosen on the selection half):")
    for name in args.methods.split(","):
        for arm in ("train", "val half"):
            accs = np.array([r[2] for r in rows if r[0] == name and r[1] == arm])
            print(f"{name:<11} {arm:<9} " + " ".join(f"{m:6.2f}" for m in accs.mean(0)))


if __name__ == "__main__":
    main()
