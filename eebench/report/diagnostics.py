"""Diagnostics beyond the trade-off curve, read off the per-sample arrays of the samples table: the
oracle bound of a run's exits, overthinking, and the per-exit table of the shared IM stage.

Each run records, per sample and exit, whether the exit's answer is correct, as one integer per
sample (bit k set: exit k, 0-based, answers correctly; :func:`eebench.report.table.correct_bits`).
From it:

- **Oracle bound** (:func:`oracle_accuracy`): the best accuracy any exit policy could reach with
  these exits at mean cost ≤ B. Every sample starts at the first exit (cost c₁); a sample that some
  exit answers correctly can move to its cheapest correct exit k* at the extra cost c(k*) − c₁;
  moving samples in increasing order of that extra cost until the mean cost reaches B is optimal,
  since every move gains exactly one correct answer (a knapsack of unit values, which greedy by
  weight solves exactly). Below c₁ no policy exists: NaN.
- **Overthinking** (Kaya, Hong & Dumitras, ICML 2019, "Shallow-Deep Networks", §4):
  :func:`overthinking`: the share of samples that some earlier exit answers correctly while the
  final classifier is wrong, the share some earlier exit answers correctly at all, and the share of
  the plain backbone's Mul-Adds that leaving at the first correct exit would save.

The shared IM stage's exits are read off the threshold runs (:data:`STAGE_METHOD`): the threshold
baseline trains nothing on top of the stage (``methods/threshold.py``).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from eebench.report import bootstrap
from eebench.report.table import (CONFIDENCE_LEVELS, SCORE_LEVELS, STAGE_METHOD, correct_bits, dequantise_confidence,
                                  exit_correct, first_correct)

__all__ = ["SampleArrays", "sample_figure", "sample_replicates", "shot_groups", "STAGE_METHOD", "correct_bits", "exit_correct", "first_correct", "oracle_accuracy", "replicate_oracle",
           "overthinking", "exit_table", "overthinking_table"]

def _moves(first: np.ndarray, exit_costs: np.ndarray, budget: float) -> tuple[np.ndarray, np.ndarray, float] | None:
    """(extra cost of each exit over the first, one-hot of each sample's first correct exit, the
    budget left above c₁); None below c₁."""
    c = np.asarray(exit_costs, dtype=np.float64)
    if budget < c[0] - 1e-12:
        return None
    onehot = np.asarray(first)[None, :] == np.arange(len(c))[:, None]            # [K, N]
    return c - c[0], onehot, budget - c[0]


def oracle_accuracy(first: np.ndarray, exit_costs: np.ndarray, budget: float) -> float:
    """The oracle bound at budget B (see the module doc), as a fraction; NaN below the first exit's cost.

    Args:
        first: ``[N]`` first correct exit per sample (:func:`first_correct`, −1 for none).
        exit_costs: ``[K]`` normalised cumulative cost of leaving at each exit, increasing.
        budget: B, a mean normalised cost.
    """
    moves = _moves(first, exit_costs, budget)
    if moves is None:
        return math.nan
    extra, onehot, left = moves
    n = onehot.shape[1]
    correct, left = int(onehot[0].sum()), left * n                # in sample-cost units
    for k in range(1, len(extra)):
        count = int(onehot[k].sum())
        if count * extra[k] <= left + 1e-9:
            correct, left = correct + count, left - count * extra[k]
        else:
            correct += int(math.floor(left / extra[k] + 1e-9))
            break
    return correct / n


def replicate_oracle(weights: np.ndarray, first: np.ndarray, exit_costs: np.ndarray, budget: float) -> np.ndarray:
    """Bootstrap replicates of :func:`oracle_accuracy`: ``[R, N]`` resampling weights (rows sum to 1)
    → ``[R]``; a sample's weight may move in part (the difference to whole samples is under 1/N)."""
    moves = _moves(first, exit_costs, budget)
    if moves is None:
        return np.full(len(weights), math.nan)
    extra, onehot, left = moves
    mass = np.asarray(weights, dtype=np.float64) @ onehot.T.astype(np.float64)     # [R, K]
    correct, left = mass[:, 0].copy(), np.full(len(mass), left)
    for k in range(1, len(extra)):
        take = np.minimum(mass[:, k], left / extra[k])
        correct += take
        left = left - take * extra[k]
    return correct


def overthinking(bits: np.ndarray, exit_costs: np.ndarray, weights: np.ndarray | None = None
                 ) -> dict[str, float | np.ndarray]:
    """Overthinking of one run's exits (Kaya et al., ICML 2019): fractions of the test samples.

    Args:
        bits: ``[N]`` per-sample bitmask of correct exits (:func:`correct_bits`).
        exit_costs: ``[K]`` normalised cumulative costs (IMs on the way included).
        weights: ``[R, N]`` bootstrap weights, for replicates instead of values.

    Returns:
        ``overthinking``: some exit before the last answers correctly and the last does not;
        ``early_correct``: some exit before the last answers correctly; ``saved``: 1 − the mean cost of
        leaving at the first correct exit (at the last, with every IM on the way, where none is
        correct), in shares of the plain backbone's Mul-Adds. Floats, or ``[R]`` with ``weights``.
    """
    c = np.asarray(exit_costs, dtype=np.float64)
    K = len(c)
    first = first_correct(bits, K)
    final_ok = exit_correct(bits, K)[K - 1]
    early = (first >= 0) & (first < K - 1)
    values = {"overthinking": early & ~final_ok, "early_correct": early,
              "saved": 1.0 - np.where(first >= 0, c[np.maximum(first, 0)], c[K - 1])}
    if weights is None:
        return {k: float(np.mean(v)) for k, v in values.items()}
    w = np.asarray(weights, dtype=np.float64)
    return {k: w @ v.astype(np.float64) for k, v in values.items()}


# ---------------------------------------------------------------------------------------------
# per-budget figures of the leaderboard read off the per-sample arrays

#: The oracle bound and its headroom over the deployed point (%), for every setting.
EXIT_FIGURES: tuple[str, ...] = ("oracle_accuracy", "headroom")
#: Accuracy of the deployed point on the classes with many (> 100), a medium number (20–100) and few
#: (< 20) train images (%; Liu et al., CVPR 2019, "Large-Scale Long-Tailed Recognition in an Open
#: World", §5), for long-tailed settings.
SHOT_FIGURES: tuple[str, ...] = ("many_shot_accuracy", "medium_shot_accuracy", "few_shot_accuracy")
SAMPLE_FIGURES: tuple[str, ...] = EXIT_FIGURES + SHOT_FIGURES
MANY_SHOT, FEW_SHOT = 100, 20


class SampleArrays:
    """The samples table's per-sample arrays of one setting, by (run id, point), with each run's exit
    costs and train class counts (from its rows of the operating-point table ``setting``)."""

    def __init__(self, samples: pd.DataFrame | None, setting: pd.DataFrame):
        self.rows = {} if samples is None else {(r.run_id, int(r.point)): r for r in samples.itertuples(index=False)}
        runs = setting.drop_duplicates("run_id").set_index("run_id")
        self.exit_costs = {r: np.asarray(c, float) for r, c in runs["exit_costs"].items()}
        self.class_counts = ({r: np.asarray(c, float) for r, c in runs["train_class_counts"].items()}
                             if "train_class_counts" in runs else {})

    def get(self, run_id: str, point: int, what: str) -> np.ndarray | None:
        r = self.rows.get((run_id, point))
        if r is None or (point < 0 and what != "auc"):          # −1: no point deployed (or the AUC row)
            return None
        if what == "auc":
            return r.auc_score.astype(np.float64) / SCORE_LEVELS
        if what == "first_correct":                             # of the exits the point answers with
            s = getattr(r, "exit_set", None)
            exits = None if s is None or pd.isna(s) else self.rows.get((run_id, -2 - int(s)))
            K = len(self.exit_costs[run_id])
            return None if exits is None else first_correct(exits.exit_correct, K)
        if what == "labels":                                    # the test labels, kept with the exits
            s = getattr(r, "exit_set", None)
            exits = None if s is None or pd.isna(s) else self.rows.get((run_id, -2 - int(s)))
            return None if exits is None or getattr(exits, "labels", None) is None else exits.labels
        if what == "levels":
            return r.confidence
        if what == "cost":
            return self.exit_costs[run_id][r.exit.astype(int)]
        if what == "confidence":
            return dequantise_confidence(r.confidence)
        return getattr(r, what).astype(np.float64)



def shot_groups(class_counts: np.ndarray) -> dict[str, np.ndarray]:
    """The classes of each shot group by their train counts: many > 100, medium 20–100, few < 20."""
    c = np.asarray(class_counts, float)
    return {"many_shot_accuracy": np.flatnonzero(c > MANY_SHOT),
            "medium_shot_accuracy": np.flatnonzero((c >= FEW_SHOT) & (c <= MANY_SHOT)),
            "few_shot_accuracy": np.flatnonzero(c < FEW_SHOT)}


def _shot_mask(samples: SampleArrays, run_id: str, point: int, figure: str) -> np.ndarray | None:
    labels = samples.get(run_id, point, "labels")
    counts = samples.class_counts.get(run_id)
    if labels is None or counts is None or not np.isfinite(counts).all():
        return None
    mask = np.isin(labels, shot_groups(counts)[figure])
    return mask if mask.any() else None


def sample_figure(figure: str, samples: SampleArrays, run_id: str, point: int, budget: float, accuracy: float) -> float:
    """One run's :data:`SAMPLE_FIGURES` figure at budget B for its deployed ``point`` (%; NaN where
    undefined: no point, no per-sample arrays, B below the first exit's cost, an empty shot group).
    ``accuracy``: the point's test accuracy (%), for the headroom."""
    if point < 0:
        return math.nan
    if figure in SHOT_FIGURES:
        mask = _shot_mask(samples, run_id, point, figure)
        return math.nan if mask is None else 100 * float(samples.get(run_id, point, "correct")[mask].mean())
    first = samples.get(run_id, point, "first_correct")
    oracle = 100 * oracle_accuracy(first, samples.exit_costs[run_id], budget) if first is not None else math.nan
    return oracle if figure == "oracle_accuracy" else oracle - accuracy


def sample_replicates(figure: str, weights: np.ndarray, samples: SampleArrays, picks: list[tuple[str, int]],
                      budgets: list[float], accuracy: np.ndarray | None) -> np.ndarray | None:
    """Bootstrap replicates (%) of a :data:`SAMPLE_FIGURES` figure pooled over seeds: ``picks`` =
    (run id, point) per seed, ``budgets`` per seed, ``accuracy`` the accuracy's replicates (for the
    headroom). None where a seed lacks its arrays."""
    reps = []
    for (run_id, point), budget in zip(picks, budgets):
        if figure in SHOT_FIGURES:
            mask = _shot_mask(samples, run_id, point, figure)
            if mask is None:
                return None
            w = np.asarray(weights, np.float64)[:, mask]
            reps.append((w @ samples.get(run_id, point, "correct")[mask]) / w.sum(1))
            continue
        first = samples.get(run_id, point, "first_correct")
        if first is None:
            return None
        reps.append(replicate_oracle(weights, first, samples.exit_costs[run_id], budget))
    mean = 100 * np.mean(reps, axis=0)
    if figure == "headroom":
        return None if accuracy is None else mean - accuracy
    return mean


# ---------------------------------------------------------------------------------------------
# tables of the shared IM stage, per setting


def stage_runs(setting: pd.DataFrame, samples: pd.DataFrame | None) -> list[tuple[str, pd.Series, Any]]:
    """The stage's runs of a setting: (run id, its first operating point's table row, its exit-set
    row of the samples table or None), by seed."""
    runs = setting[setting["method"] == STAGE_METHOD].sort_values(["seed", "run_id", "point"])
    out = []
    for run_id, run in runs.groupby("run_id", sort=False):
        row = None
        if samples is not None:
            rows = samples[(samples["run_id"] == run_id) & (samples["point"] <= -2)]
            row = rows.iloc[0] if len(rows) else None
        out.append((run_id, run.iloc[0], row))
    return out


def _mean_se(values: list[float], reps: list[np.ndarray] | None, scale: float) -> tuple[float, float]:
    mean = scale * float(np.mean(values)) if values else math.nan
    se = bootstrap.standard_error(scale * np.mean(reps, axis=0)) if reps else math.nan
    return mean, se


def exit_table(df: pd.DataFrame, samples: pd.DataFrame | None, replicates: int) -> pd.DataFrame:
    """Per setting and exit of the shared IM stage (the :data:`STAGE_METHOD` runs, means over their
    seeds): the exit's normalised cost, and accuracy, ECE, AUROC and AURC of its answer on all test
    samples (%, exact from the operating-point table), each with the bootstrap standard error of the
    test estimate (from the samples table; empty without it). Empty for a setting without such runs."""
    rows = []
    for (ds, bb), setting in df.groupby(["dataset", "backbone"], sort=True):
        stage = stage_runs(setting, samples)
        if not stage:
            continue
        n = int(setting["n_test"].iloc[0])
        weights = bootstrap.resample_weights(n, replicates, f"{ds}/{bb}") if samples is not None else None
        K = int(stage[0][1]["num_exits"])
        for k in range(K):
            row: dict[str, Any] = {"dataset": ds, "backbone": bb, "exit": k + 1, "seeds": len(stage),
                                   "cost": float(np.mean([r["exit_costs"][k] for _, r, _ in stage]))}
            ok = conf = None
            if weights is not None and all(s is not None and s["exit_confidence"] is not None for _, _, s in stage):
                ok = [exit_correct(s["exit_correct"], K)[k] for _, _, s in stage]
                conf = [np.asarray(s["exit_confidence"]).reshape(K, -1)[k] for _, _, s in stage]
            reps = {
                "accuracy": ok and [bootstrap.replicate_mean(weights, o) for o in ok],
                "ece": ok and [bootstrap.replicate_ece(weights, o, dequantise_confidence(c)) for o, c in zip(ok, conf)],
                "auroc": ok and [bootstrap.replicate_auroc(weights, o, c, CONFIDENCE_LEVELS) for o, c in zip(ok, conf)],
                "aurc": ok and [bootstrap.replicate_aurc(weights, o, c, CONFIDENCE_LEVELS) for o, c in zip(ok, conf)]}
            for figure, column in (("accuracy", "im_accuracy"), ("ece", "im_ece"), ("auroc", "im_auroc"),
                                   ("aurc", "im_aurc")):
                row[f"{figure}_mean"], row[f"{figure}_se"] = _mean_se([r[column][k] for _, r, _ in stage],
                                                                      reps[figure], 100.0)
            rows.append(row)
    return pd.DataFrame(rows)


def overthinking_table(df: pd.DataFrame, samples: pd.DataFrame | None, replicates: int) -> pd.DataFrame:
    """Per setting, :func:`overthinking` of the shared IM stage's exits (%, means over the
    :data:`STAGE_METHOD` runs' seeds, with bootstrap standard errors). Needs the samples table."""
    rows = []
    if samples is None:
        return pd.DataFrame(rows)
    for (ds, bb), setting in df.groupby(["dataset", "backbone"], sort=True):
        stage = [(r, s) for _, r, s in stage_runs(setting, samples) if s is not None]
        if not stage:
            continue
        weights = bootstrap.resample_weights(int(setting["n_test"].iloc[0]), replicates, f"{ds}/{bb}")
        values = [overthinking(s["exit_correct"], r["exit_costs"]) for r, s in stage]
        reps = [overthinking(s["exit_correct"], r["exit_costs"], weights) for r, s in stage]
        row: dict[str, Any] = {"dataset": ds, "backbone": bb, "exits": int(stage[0][0]["num_exits"]),
                               "seeds": len(stage)}
        for key in ("overthinking", "early_correct", "saved"):
            row[f"{key}_mean"], row[f"{key}_se"] = _mean_se([v[key] for v in values], [r[key] for r in reps], 100.0)
        rows.append(row)
    return pd.DataFrame(rows)


def _cell(mean: float, se: float, fmt: str = ".2f") -> str:
    if not np.isfinite(mean):
        return "–"
    return f"{mean:{fmt}} ± {se:{fmt}}" if np.isfinite(se) else f"{mean:{fmt}}"


def diagnostics_markdown(exits: pd.DataFrame, over: pd.DataFrame) -> str:
    """The overthinking table (one row per setting) and each setting's per-exit table as Markdown."""
    lines = ["## Overthinking (shared IM stage)", "",
             "| setting | exits | seeds | overthinking % | some earlier exit correct % | Mul-Adds saved at the first "
             "correct exit % |", "|---|---:|---:|---:|---:|---:|"]
    for _, r in over.iterrows():
        lines.append(f"| {r['dataset']} / {r['backbone']} | {r['exits']} | {r['seeds']} | "
                     + " | ".join(_cell(r[f"{k}_mean"], r[f"{k}_se"]) for k in ("overthinking", "early_correct", "saved"))
                     + " |")
    lines += ["", "Overthinking: the share of test samples that some exit before the last answers correctly while "
                  "the backbone's classifier is wrong (Kaya et al., ICML 2019); saved: 1 − the mean cost of leaving "
                  "at the first correct exit (IMs on the way included), in shares of the plain backbone's Mul-Adds.",
              ""]
    for (ds, bb), g in exits.groupby(["dataset", "backbone"], sort=True) if len(exits) else []:
        lines += [f"## Exits of the shared IM stage: {ds} / {bb}", "",
                  "| exit | cost | accuracy % | ECE % | AUROC % | AURC % |", "|---:|---:|---:|---:|---:|---:|"]
        for _, r in g.iterrows():
            lines.append(f"| {r['exit']} | {r['cost']:.3f} | "
                         + " | ".join(_cell(r[f"{k}_mean"], r[f"{k}_se"]) for k in ("accuracy", "ece", "auroc", "aurc"))
                         + " |")
        lines.append("")
    return "\n".join(lines)
