"""The leaderboard: val-selected figures per method, with the uncertainty of their test estimates.

Per run (one method variant, one seed) and budget B, the deployed point is chosen on the selection
split (``val``; :func:`eebench.report.selection.select`), and the leaderboard reports its **test**
figures; then the mean (and the std, ddof = 1) over the variant's seeds. Beside every mean, its
``_se``: the bootstrap standard error of the test estimate, the seeds pooled (the mean over seeds
recomputed on each resample of the test samples, :mod:`eebench.report.bootstrap`). Per setting
(dataset, backbone) and budget, ``tied_with_best_at_<B>`` says whether a paired bootstrap cannot
separate the variant's accuracy from the best one's (95 %).

Figures per run, then over seeds:

- ``accuracy_at_<B>``, ``cost_at_<B>``, ``ece_at_<B>`` (%, 15 equal-width bins),
  ``inefficiency95_at_<B>`` (mean conformal set size at α = 0.05), ``auroc_at_<B>`` and
  ``aurc_at_<B>`` (%, failure prediction by the answered confidence,
  :func:`eebench.harness.metrics.auroc`, :func:`~eebench.harness.metrics.aurc`) of the point
  deployed at B; empty where a seed has no point of selection cost ≤ B;
- ``oracle_accuracy_at_<B>`` (%): the best accuracy any exit policy could reach at mean cost ≤ B with
  the exits of the point deployed at B (:func:`eebench.report.diagnostics.oracle_accuracy`; empty
  below the first exit's cost), and ``headroom_at_<B>``, the oracle less the deployed point's
  accuracy, per seed then averaged: a bound, never ranked;
- ``auc``: the mean of the val-selected test accuracy over budgets uniform on the setting's common
  range [``auc_range_lo``, ``auc_range_hi``]: from the largest cheapest-point cost of any run of the
  setting to 1 (the plain backbone), so that no method is charged for budgets another cannot meet;
- ``measured_speedup_at_<B>`` (only where some run was timed by ``eebench latency``): the plain
  backbone's time over the runtime's for the point deployed at B, as measured (no ``_se``: a
  timing, not an estimate from the test samples; ``_std`` over seeds);
- ``cost_to_backbone_minus_1pt``: the test cost of the cheapest point (by selection cost) whose
  selection accuracy is at least the backbone's − 1 point; empty if none.

Columns: ``dataset``, ``backbone``, ``variant``, ``seeds``, ``points``, ``weights_sha256`` and
``weights_source`` (the backbone the figures rest on), ``backbone_accuracy_{mean,se}`` (binomial
se), each figure's ``_mean``, ``_std`` and ``_se``, and ``tied_with_best_at_<B>``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from eebench.report import bootstrap, diagnostics, html
from eebench.paths import slug
from eebench.records import write_atomic
from eebench.report.selection import (cheapest_within, check_budgets, check_selection_split, select, selection_intervals)
from eebench.report.table import CONFIDENCE_LEVELS, method_rank

#: Budgets (normalised cost) of the leaderboard.
BUDGETS: tuple[float, ...] = (0.25, 0.50, 0.75, 1.00)
#: "backbone accuracy − 1 point", as a fraction.
BACKBONE_TOLERANCE = 0.01
#: Upper end of the AUC's budget range: the plain backbone's cost.
AUC_HI = 1.0
GROUP_COLUMNS: tuple[str, ...] = ("dataset", "backbone", "method", "variant")
CSV_FLOAT_FORMAT = "%.4f"
#: Per-budget figures: name → (table column, scale).
POINT_FIGURES: dict[str, tuple[str, float]] = {"accuracy": ("accuracy", 100.0), "cost": ("cost", 1.0),
                                               "ece": ("ece", 100.0), "inefficiency95": ("inefficiency_at_95", 1.0),
                                               "auroc": ("auroc", 100.0), "aurc": ("aurc", 100.0)}
#: Per-budget figures of the runs timed by ``eebench latency`` (columns only where some run was).
MEASURED_FIGURES: dict[str, tuple[str, float]] = {"measured_speedup": ("measured_speedup", 1.0)}


@dataclass(frozen=True)
class ReportOptions:
    """How the leaderboard chooses and what it reports.

    Attributes:
        budgets: budgets B (normalised cost).
        selection: the split points are chosen on (``val``; ``test`` only to measure how much
            choosing on test would flatter).
        replicates: bootstrap resamples of the test samples.
    """

    budgets: tuple[float, ...] = BUDGETS
    selection: str = "val"
    replicates: int = bootstrap.DEFAULT_REPLICATES

    def __post_init__(self) -> None:
        object.__setattr__(self, "budgets", tuple(check_budgets(self.budgets)))
        check_selection_split(self.selection)
        bootstrap.check_replicates(self.replicates)

    @property
    def columns(self) -> tuple[str, str]:
        """The table columns of the selection split's cost and accuracy."""
        return ("val_cost", "val_accuracy") if self.selection == "val" else ("cost", "accuracy")


def budget_label(b: float) -> str:
    return f"{b:.2f}"


# ---------------------------------------------------------------------------------------------
# variants


def _canonical(v: Any) -> str:
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if isinstance(v, np.generic):
        v = v.item()
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return "null"
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True)


def _param_name(column: str) -> str:
    """``p_method_lr`` → ``lr``; ``p_dataset_split_seed`` → ``dataset.split_seed``; ``p_im_lr`` → ``im.lr``."""
    if column.startswith("p_method_"):
        return column.removeprefix("p_method_")
    if column.startswith("p_im_"):
        return "im." + column.removeprefix("p_im_")
    if column.startswith("p_recipe_"):
        return "recipe." + column.removeprefix("p_recipe_")
    return "dataset." + column.removeprefix("p_dataset_")


def variant_names(df: pd.DataFrame) -> pd.Series:
    """``method`` or ``method[k=v,...]`` per row, naming the method, dataset and IM-stage parameters
    that differ between the runs of the same (dataset, backbone, method) in ``df`` (benchopt style).

    Runs differing only in ``seed`` are seeds of one variant.
    """
    params = [c for c in df.columns if c.startswith(("p_method_", "p_dataset_", "p_im_", "p_recipe_"))]
    out = pd.Series(df["method"].astype(str).to_numpy(), index=df.index, dtype=object)
    for _, g in df.groupby(["dataset", "backbone", "method"], sort=True):
        runs = g.drop_duplicates("run_id")
        canon = {c: runs[c].map(_canonical) for c in params}
        varying = [c for c in params if canon[c].nunique() > 1]
        if not varying:
            continue
        for run_id, idx in g.groupby("run_id").groups.items():
            first = g.loc[idx[0]]
            parts = [f"{_param_name(c)}={_canonical(first[c])}" for c in varying]
            out.loc[idx] = f"{first['method']}[{','.join(parts)}]"
    return out


# ---------------------------------------------------------------------------------------------
# choices on the selection split


@dataclass
class RunChoice:
    """What a run deploys: the point at each budget (−1: none), the point reaching the backbone − 1
    point (−1: none), and the share of the AUC range each point is deployed over."""

    at: dict[float, int]
    to_backbone: int
    auc: dict[int, float] = field(default_factory=dict)


def auc_range(setting: pd.DataFrame, options: ReportOptions) -> tuple[float, float]:
    """[lo, hi] of a setting's AUC: lo the largest cheapest selection cost of any run, hi = 1.
    ``(nan, nan)`` when lo ≥ hi."""
    cost_col, _ = options.columns
    lo = float(setting.groupby("run_id")[cost_col].min().max())
    return (lo, AUC_HI) if lo < AUC_HI else (math.nan, math.nan)


def choose(run: pd.DataFrame, options: ReportOptions, lo: float = math.nan, hi: float = math.nan) -> RunChoice:
    """The points a run deploys (its rows of the table, in point order)."""
    cost_col, acc_col = options.columns
    cost, acc = run[cost_col].to_numpy(float), run[acc_col].to_numpy(float)
    at = dict(zip(options.budgets, select(cost, acc, options.budgets).tolist()))
    backbone = float(run["backbone_val_accuracy" if options.selection == "val" else "backbone_accuracy"].iloc[0])
    to_bb = cheapest_within(cost, acc, backbone - BACKBONE_TOLERANCE)
    auc = selection_intervals(cost, acc, lo, hi) if math.isfinite(lo) else {}
    return RunChoice(at, to_bb, auc)


def choices(df: pd.DataFrame, options: ReportOptions) -> dict[str, RunChoice]:
    """Run id → :class:`RunChoice`, the AUC range taken per setting."""
    out = {}
    for _, setting in df.groupby(["dataset", "backbone"], sort=True):
        lo, hi = auc_range(setting, options)
        for run_id, run in setting.groupby("run_id", sort=True):
            out[run_id] = choose(run.sort_values("point"), options, lo, hi)
    return out


def payload_plan(df: pd.DataFrame, options: ReportOptions) -> dict[str, dict[str, Any]]:
    """Run id → the points whose per-sample arrays the leaderboard needs, and the AUC shares
    (for :func:`eebench.report.table.sample_payloads`)."""
    plan = {}
    for run_id, c in choices(df, options).items():
        points = sorted({p for p in [*c.at.values(), c.to_backbone] if p >= 0})
        plan[run_id] = {"points": points, "auc": c.auc}
    return plan


# ---------------------------------------------------------------------------------------------
# the leaderboard


def figure_names(options: ReportOptions, measured: bool = False, long_tail: bool = False) -> list[str]:
    """The per-run figures, in column order (``measured``: with the measured speed-up at each budget;
    ``long_tail``: with the many/medium/few-shot accuracies)."""
    figures = [*POINT_FIGURES, *diagnostics.EXIT_FIGURES, *(diagnostics.SHOT_FIGURES if long_tail else ()),
               *(MEASURED_FIGURES if measured else {})]
    per_budget = [f"{f}_at_{budget_label(b)}" for b in options.budgets for f in figures]
    return per_budget + ["auc", "cost_to_backbone_minus_1pt"]


def has_long_tail(df: pd.DataFrame) -> bool:
    """Whether some setting of the table is long-tailed (a dataset with an ``imbalance_factor``)."""
    return "p_dataset_imbalance_factor" in df.columns and bool(df["p_dataset_imbalance_factor"].notna().any())


def has_measured(df: pd.DataFrame) -> bool:
    """Whether some run of the table was timed by ``eebench latency``."""
    return "measured_speedup" in df.columns and bool(df["measured_speedup"].notna().any())


def _replicates(weights: np.ndarray | None, samples: diagnostics.SampleArrays, picks: list[tuple[str, int]], figure: str,
                budgets: list[float] | None = None) -> np.ndarray | None:
    """Bootstrap replicates of a figure pooled over seeds: ``picks`` = (run id, point) per seed
    (point −1: the run's AUC row); ``budgets``, the oracle's budget per seed. None without resampling
    weights or per-sample arrays."""
    if weights is None or figure in MEASURED_FIGURES:     # a timing, not an estimate from the test samples
        return None
    if figure in diagnostics.SAMPLE_FIGURES:
        accuracy = _replicates(weights, samples, picks, "accuracy") if figure == "headroom" else None
        return diagnostics.sample_replicates(figure, weights, samples, picks, budgets or [], accuracy)
    if figure in ("auroc", "aurc"):
        score = bootstrap.replicate_auroc if figure == "auroc" else bootstrap.replicate_aurc
        parts = [(samples.get(r, p, "correct"), samples.get(r, p, "levels")) for r, p in picks]
        if any(c is None for c, _ in parts):
            return None
        return 100 * np.mean([score(weights, c, lv, CONFIDENCE_LEVELS) for c, lv in parts], axis=0)
    if figure == "ece":
        parts = [(samples.get(r, p, "correct"), samples.get(r, p, "confidence")) for r, p in picks]
        if any(c is None for c, _ in parts):
            return None
        return 100 * np.mean([bootstrap.replicate_ece(weights, c, conf) for c, conf in parts], axis=0)
    what, scale = {"accuracy": ("correct", 100.0), "cost": ("cost", 1.0), "inefficiency95": ("set_size", 1.0),
                   "auc": ("auc", 100.0)}[figure]
    values = [samples.get(r, p, what) for r, p in picks]
    if any(v is None for v in values):
        return None
    return scale * bootstrap.replicate_mean(weights, np.mean(values, axis=0))


def _run_figures(name: str, runs: list[tuple[str, pd.DataFrame]], picked: dict[str, RunChoice],
                 samples: diagnostics.SampleArrays) -> tuple[str, list[float], list[tuple[str, int]]]:
    """One leaderboard figure for each seed of a variant: ``(figure kind, values, (run id, point)
    per seed)``; the point is −1 for the AUC (its per-sample row) and for a figure a run lacks."""
    values, picks = [], []
    figure, label = name.rsplit("_at_", 1) if "_at_" in name else (name, "")
    if figure in diagnostics.SAMPLE_FIGURES:
        for run_id, run in runs:
            point = next(p for b, p in picked[run_id].at.items() if budget_label(b) == label)
            accuracy = 100 * float(run.iloc[point]["accuracy"]) if point >= 0 else math.nan
            values.append(diagnostics.sample_figure(figure, samples, run_id, point, float(label), accuracy))
            picks.append((run_id, point))
        return figure, values, picks
    for run_id, run in runs:
        c = picked[run_id]
        if name == "auc":
            figure, point = "auc", -1
            values.append(100 * sum(w * float(run.iloc[i]["accuracy"]) for i, w in c.auc.items()) if c.auc else math.nan)
        else:
            if name == "cost_to_backbone_minus_1pt":
                figure, point = "cost", c.to_backbone
            else:
                figure, label = name.rsplit("_at_", 1)
                point = next(p for b, p in c.at.items() if budget_label(b) == label)
            column, scale = {**POINT_FIGURES, **MEASURED_FIGURES}[figure]
            values.append(scale * float(run.iloc[point][column]) if point >= 0 else math.nan)
        picks.append((run_id, point))
    return figure, values, picks


def leaderboard(df: pd.DataFrame, samples: pd.DataFrame | None = None, options: ReportOptions = ReportOptions()
                ) -> pd.DataFrame:
    """One row per (dataset, backbone, method variant); see the module doc for the columns.

    Args:
        df: the operating-point table.
        samples: the ``samples.parquet`` table (None: the ``_se`` and tie columns stay empty).
    """
    df = df.assign(variant=variant_names(df))
    picked = choices(df, options)
    names = figure_names(options, has_measured(df), has_long_tail(df))
    rows = []
    for (ds, bb), setting in df.groupby(["dataset", "backbone"], sort=True):
        lo, hi = auc_range(setting, options)
        n_test = setting["n_test"].iloc[0]
        same_test = setting["n_test"].nunique() == 1 and setting["test_sha256"].nunique() == 1
        weights = (bootstrap.resample_weights(int(n_test), options.replicates, f"{ds}/{bb}")
                   if samples is not None and same_test else None)
        data = diagnostics.SampleArrays(samples, setting)
        variants = sorted(setting["variant"].unique(), key=method_rank)
        accuracy_reps: dict[float, dict[str, np.ndarray | None]] = {b: {} for b in options.budgets}
        setting_rows = []
        for variant in variants:
            g = setting[setting["variant"] == variant]
            runs = [(run_id, run.sort_values("point").reset_index(drop=True))
                    for run_id, run in g.groupby("run_id", sort=True)]
            first = g.iloc[0]
            p = float(first["backbone_accuracy"])
            row: dict[str, Any] = {"dataset": ds, "backbone": bb, "method": first["method"], "variant": variant,
                                   "seeds": len(runs), "points": len(g),
                                   "weights_sha256": ",".join(sorted(g["weights_sha256"].astype(str).unique())),
                                   "weights_source": ",".join(sorted(g["weights_source"].astype(str).unique())),
                                   "backbone_accuracy_mean": 100 * p,
                                   "backbone_accuracy_se": 100 * math.sqrt(p * (1 - p) / max(int(n_test), 1))}
            for name in names:
                figure, values, picks = _run_figures(name, runs, picked, data)
                v = np.asarray(values, float)
                defined = bool(np.isfinite(v).all())
                row[f"{name}_mean"] = float(v.mean()) if defined else math.nan
                row[f"{name}_std"] = float(np.std(v, ddof=1)) if defined and len(v) > 1 else math.nan
                budgets = [float(name.rsplit("_at_", 1)[1])] * len(picks) if figure in diagnostics.SAMPLE_FIGURES else None
                reps = _replicates(weights, data, picks, figure, budgets) if defined else None
                row[f"{name}_se"] = bootstrap.standard_error(reps) if reps is not None else math.nan
                if name.startswith("accuracy_at_"):
                    accuracy_reps[float(name.rsplit("_at_", 1)[1])][variant] = reps
            row["auc_range_lo"], row["auc_range_hi"] = lo, hi
            setting_rows.append(row)
        for b in options.budgets:
            label = budget_label(b)
            means = {r["variant"]: r[f"accuracy_at_{label}_mean"] for r in setting_rows}
            defined = [v for v in variants if np.isfinite(means[v])]
            best = max(defined, key=lambda v: means[v]) if defined else None
            for r in setting_rows:
                reps, best_reps = accuracy_reps[b].get(r["variant"]), accuracy_reps[b].get(best) if best else None
                r[f"tied_with_best_at_{label}"] = (None if reps is None or best_reps is None
                                                   else bootstrap.tied(best_reps, reps))
        rows += setting_rows
    return _order_board(pd.DataFrame(rows), options)


def _order_board(board: pd.DataFrame, options: ReportOptions) -> pd.DataFrame:
    head = ["dataset", "backbone", "method", "variant", "seeds", "points", "weights_sha256", "weights_source",
            "backbone_accuracy_mean", "backbone_accuracy_se"]
    body = []
    first = budget_label(options.budgets[0])
    for name in figure_names(options, f"measured_speedup_at_{first}_mean" in board,
                             f"many_shot_accuracy_at_{first}_mean" in board):
        body += [f"{name}_mean", f"{name}_std", f"{name}_se"]
        if name == "auc":
            body += ["auc_range_lo", "auc_range_hi"]
    ties = [f"tied_with_best_at_{budget_label(b)}" for b in options.budgets]
    return board[head + body + ties]


def _csv_bytes(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False, float_format=CSV_FLOAT_FORMAT, lineterminator="\n").encode()


def _cell(mean: float, se: float, fmt: str) -> str:
    if not np.isfinite(mean):
        return "–"
    return f"{mean:{fmt}} ± {se:{fmt}}" if np.isfinite(se) else f"{mean:{fmt}}"


def leaderboard_markdown(board: pd.DataFrame, options: ReportOptions = ReportOptions()) -> str:
    """The leaderboard as Markdown, one table per setting: "mean ± se" cells (se of the test
    estimate), the most accurate variant at each budget in bold, † where the paired bootstrap cannot
    separate a variant from it."""
    acc_cols = [(budget_label(b), f"acc@{budget_label(b)} %") for b in options.budgets]
    measured = "measured_speedup_at_0.50_mean" in board
    lines = []
    for (ds, bb), g in board.groupby(["dataset", "backbone"], sort=False):
        first = g.iloc[0]
        lines += [f"### {ds} / {bb}", "",
                  f"Backbone accuracy {first['backbone_accuracy_mean']:.2f} ± {first['backbone_accuracy_se']:.2f} %; "
                  f"weights sha256 `{first['weights_sha256']}` ({first['weights_source']}); "
                  f"AUC over budgets [{first['auc_range_lo']:.3f}, {first['auc_range_hi']:.2f}].", "",
                  "| method | seeds | " + " | ".join(c[1] for c in acc_cols)
                  + " | AUC % | cost to bb−1pt | ECE@0.50 % | ECE@0.75 % | ineff95@0.75 | AUROC@0.50 % | oracle@0.50 % |"
                  + (" measured × @0.50 |" if measured else ""),
                  "|---|---:|" + "---:|" * (len(acc_cols) + 7 + measured)]
        best = {b: g[f"accuracy_at_{b}_mean"].max() for b, _ in acc_cols}
        for _, r in g.iterrows():
            cells = []
            for b, _ in acc_cols:
                text = _cell(r[f"accuracy_at_{b}_mean"], r[f"accuracy_at_{b}_se"], ".2f")
                if np.isfinite(r[f"accuracy_at_{b}_mean"]) and r[f"accuracy_at_{b}_mean"] == best[b]:
                    text = f"**{text}**"
                elif r[f"tied_with_best_at_{b}"] is True:
                    text += " †"
                cells.append(text)
            cells.append(_cell(r["auc_mean"], r["auc_se"], ".2f"))
            cells.append(_cell(r["cost_to_backbone_minus_1pt_mean"], r["cost_to_backbone_minus_1pt_se"], ".3f"))
            for b in ("0.50", "0.75"):
                cells.append(_cell(r.get(f"ece_at_{b}_mean", math.nan), r.get(f"ece_at_{b}_se", math.nan), ".2f"))
            cells.append(_cell(r.get("inefficiency95_at_0.75_mean", math.nan), r.get("inefficiency95_at_0.75_se", math.nan),
                               ".2f"))
            for f in ("auroc", "oracle_accuracy"):
                cells.append(_cell(r.get(f"{f}_at_0.50_mean", math.nan), r.get(f"{f}_at_0.50_se", math.nan), ".2f"))
            if measured:
                cells.append(_cell(r["measured_speedup_at_0.50_mean"], math.nan, ".2f"))
            lines.append(f"| {r['variant']} | {r['seeds']} | " + " | ".join(cells) + " |")
        lines += ["", "Cells: mean over seeds of the test figure of the point chosen on val at that budget ± the "
                      "bootstrap standard error of the test estimate (seeds pooled); **bold**: the most accurate; "
                      "†: not separable from it (paired bootstrap, 95 %). AUROC: how well the answered confidence separates "
                      "correct from wrong answers; oracle: the best accuracy any exit policy reaches with the deployed "
                      "point's exits at that budget (a bound, not ranked)."
                  + (" Measured ×: the plain backbone's time over the runtime's (`eebench latency`, exited samples "
                     "dropped from the batch) for the same point, mean over the seeds timed." if measured else ""), ""]
    return "\n".join(lines)


def write_report(df: pd.DataFrame, samples: pd.DataFrame | None, out_dir: Path,
                 options: ReportOptions = ReportOptions()) -> tuple[pd.DataFrame, list[Path]]:
    """Write ``leaderboard.csv``, ``leaderboard_<dataset>.csv`` per dataset, ``leaderboard.md``, the
    shared IM stage's per-exit table ``exits_<dataset>_<backbone>.csv`` per setting, ``overthinking.csv``
    and ``diagnostics.md`` under ``out_dir`` (atomically; floats as ``%.4f``, rows in a fixed order), and
    ``index.html``, all of it as one self-contained web page (:mod:`eebench.report.html`).

    Returns:
        ``(leaderboard, paths written)``.
    """
    out_dir = Path(out_dir)
    board = leaderboard(df, samples, options)
    written = [out_dir / "leaderboard.csv"]
    write_atomic(written[0], _csv_bytes(board))
    for ds, g in board.groupby("dataset", sort=True):
        path = out_dir / f"leaderboard_{slug(ds)}.csv"
        write_atomic(path, _csv_bytes(g))
        written.append(path)
    path = out_dir / "leaderboard.md"
    write_atomic(path, leaderboard_markdown(board, options).encode())
    written.append(path)
    exits = diagnostics.exit_table(df, samples, options.replicates)
    over = diagnostics.overthinking_table(df, samples, options.replicates)
    for (ds, bb), g in exits.groupby(["dataset", "backbone"], sort=True) if len(exits) else []:
        written.append(out_dir / f"exits_{slug(ds)}_{slug(bb)}.csv")
        write_atomic(written[-1], _csv_bytes(g))
    if len(over):
        written.append(out_dir / "overthinking.csv")
        write_atomic(written[-1], _csv_bytes(over))
    written.append(out_dir / "diagnostics.md")
    write_atomic(written[-1], diagnostics.diagnostics_markdown(exits, over).encode())
    written.append(html.write_page(df.assign(variant=variant_names(df)), samples, board, options,
                                   out_dir / html.PAGE_NAME))
    return board, written
