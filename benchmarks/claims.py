"""The JEI-DNN paper's claims, read off the committed tables (run on demand; the README quotes it).

For every setting of ``results/operating_points.parquet`` (with ``samples.parquet`` beside it):

1. accuracy at matched cost, JEI-DNN ≥ L2W-DEN ≥ BoostedNet ≥ threshold: at each budget, each
   consecutive pair's difference of val-selected test accuracy (seeds pooled) with its paired
   bootstrap 95 % interval: "holds" (interval above 0), "refuted" (below 0) or "not separable";
2. JEI-DNN better calibrated: the same for ECE (lower is better) against every other method;
3. conformal coverage ≥ 1 − α: the test coverage at α = 0.05 and 0.10 of every method's
   val-selected points (mean over budgets and seeds), against 1 − α less its binomial se;
4. failure prediction tracks early-exit accuracy better than calibration (arXiv 2508.21495): at
   each budget, Spearman's rank correlation over the method variants of a setting between the
   accuracy of the deployed point and its AUROC, −AURC and −ECE (1: the same ranking).

::

    python benchmarks/claims.py [results/operating_points.parquet] [--budgets 0.25,0.5,0.75]
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from scipy.stats import spearmanr

from eebench.report import bootstrap, table
from eebench.report.diagnostics import SampleArrays
from eebench.report.leaderboard import ReportOptions, _replicates, choices, leaderboard, variant_names

ORDER = ("jei", "l2w", "boosted", "threshold")


def verdict(reps: np.ndarray) -> str:
    lo, hi = np.quantile(reps, [0.025, 0.975])
    return "holds" if lo > 0 else "refuted" if hi < 0 else "not separable"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("table", nargs="?", type=Path, default=Path("results") / table.TABLE_NAME)
    ap.add_argument("--budgets", default="0.25,0.5,0.75")
    args = ap.parse_args()
    budgets = tuple(float(b) for b in args.budgets.split(","))
    options = ReportOptions(budgets)
    df = table.read_table(args.table)
    samples = table.read_samples(args.table.parent)
    df = df.assign(variant=variant_names(df))
    picked = choices(df, options)
    for (ds, bb), setting in df.groupby(["dataset", "backbone"], sort=True):
        weights = bootstrap.resample_weights(int(setting["n_test"].iloc[0]), options.replicates, f"{ds}/{bb}")
        data = SampleArrays(samples, setting)
        runs = {v: sorted(g["run_id"].unique()) for v, g in setting.groupby("variant")}
        jei = "jei[im_loss=uniform]" if "jei[im_loss=uniform]" in runs else "jei"
        names = {"jei": jei, **{m: m for m in ORDER[1:]}}
        print(f"\n== {ds} / {bb}")

        def reps(variant: str, b: float, figure: str) -> np.ndarray | None:
            picks = [(r, picked[r].at[b]) for r in runs[variant]]
            return _replicates(weights, data, picks, figure)

        for b in budgets:
            cells = []
            for hi_name, lo_name in zip(ORDER, ORDER[1:]):
                a, c = reps(names[hi_name], b, "accuracy"), reps(names[lo_name], b, "accuracy")
                if a is None or c is None:
                    cells.append(f"{hi_name} ≥ {lo_name}: undefined")
                    continue
                d = a - c
                cells.append(f"{hi_name} − {lo_name} {np.mean(d):+.2f} [{np.quantile(d, 0.025):+.2f}, "
                             f"{np.quantile(d, 0.975):+.2f}] {verdict(d)}")
            print(f"accuracy @{b:.2f}: " + "; ".join(cells))
        for b in budgets:
            cells = []
            mine = reps(jei, b, "ece")
            for other in sorted(runs, key=table.method_rank):
                if other.startswith("jei"):
                    continue
                theirs = reps(other, b, "ece")
                if mine is None or theirs is None:
                    cells.append(f"{other}: undefined")
                    continue
                d = theirs - mine                                   # > 0: JEI-DNN better calibrated
                cells.append(f"{other} {np.mean(d):+.2f} {verdict(d)}")
            print(f"ECE @{b:.2f}, other − JEI-DNN (points): " + "; ".join(cells))
        n = int(setting["n_test"].iloc[0])
        for alpha in (0.05, 0.10):
            cells = []
            for variant in sorted(runs, key=table.method_rank):
                cov = []
                for r in runs[variant]:
                    run = setting[setting["run_id"] == r].sort_values("point").reset_index(drop=True)
                    for b in budgets:
                        p = picked[r].at[b]
                        if p >= 0:
                            a = np.asarray(run.iloc[p]["conformal_alpha"])
                            cov.append(float(np.asarray(run.iloc[p]["conformal_coverage"])[np.isclose(a, alpha)][0]))
                mean = float(np.mean(cov)) if cov else math.nan
                ok = mean >= 1 - alpha - math.sqrt(alpha * (1 - alpha) / n)
                cells.append(f"{variant} {mean:.3f}{'' if ok else ' (below)'}")
            print(f"coverage at α = {alpha:.2f} (target {1 - alpha:.2f}): " + "; ".join(cells))
        board = leaderboard(setting.drop(columns="variant"), samples, options)
        for b in budgets:
            label = f"{b:.2f}"
            ok = board[f"accuracy_at_{label}_mean"].notna() & board[f"auroc_at_{label}_mean"].notna()
            part = board[ok]
            if len(part) < 3:
                print(f"ranking @{label}: fewer than 3 variants with a point")
                continue
            acc = part[f"accuracy_at_{label}_mean"]
            rho = {name: spearmanr(acc, sign * part[f"{col}_at_{label}_mean"]).statistic
                   for name, col, sign in (("AUROC", "auroc", 1), ("−AURC", "aurc", -1), ("−ECE", "ece", -1))}
            print(f"ranking @{label} ({len(part)} variants), Spearman ρ with accuracy: "
                  + ", ".join(f"{k} {v:+.2f}" for k, v in rho.items()))


if __name__ == "__main__":
    main()
