"""Figures of the diagnostics (:mod:`eebench.report.diagnostics`), from the samples table:

- the oracle bound of the shared IM stage against the budget, drawn in each setting's Fig. 2 beside
  the methods (a bound, not a method: dotted black, never in the legend's ranking);
- ``fig7_risk_coverage``: per setting, the risk–coverage curve (Geifman & El-Yaniv, NeurIPS 2017)
  of each method's point deployed at budget 0.5 (the seeds' test samples pooled), and of the
  backbone's own classifier (the shared IM stage's last exit) as a reference, AURC in the legend.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from eebench.report import diagnostics
from eebench.report.figure_style import method_legend, new_figure, setting_title
from eebench.report.selection import select

#: The budget whose deployed points fig7 draws.
RISK_BUDGET = 0.5


def oracle_curve(setting: pd.DataFrame, samples: pd.DataFrame | None, points: int = 120) -> pd.DataFrame | None:
    """The oracle bound of the shared IM stage's exits over budgets from its first exit's cost to its
    last's: long table (seed, cost, oracle %); None without the stage's runs or samples."""
    rows = []
    for _, run, exits in diagnostics.stage_runs(setting, samples):
        if exits is None:
            continue
        costs = np.asarray(run["exit_costs"], float)
        first = diagnostics.first_correct(exits["exit_correct"], len(costs))
        for b in np.linspace(costs[0], costs[-1], points):
            rows.append({"seed": run["seed"], "cost": b, "oracle": 100 * diagnostics.oracle_accuracy(first, costs, b)})
    return pd.DataFrame(rows) if rows else None


def draw_oracle(ax: Any, curve: pd.DataFrame | None) -> None:
    """The oracle curve (mean over seeds) on a Fig. 2 axis, labelled as a bound."""
    if curve is None:
        return
    mean = curve.groupby("cost")["oracle"].mean()
    ax.plot(mean.index, mean.to_numpy(), color="black", ls=":", lw=1.5, label="oracle bound (shared IM stage)")


def risk_coverage(correct: np.ndarray, confidence: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(coverage, risk) of the answers taken in decreasing confidence, tied confidences together
    (as :func:`eebench.harness.metrics.aurc` charges them)."""
    values, group = np.unique(-np.asarray(confidence, float), return_inverse=True)
    n_g = np.bincount(group, minlength=len(values))
    e_g = np.bincount(group, weights=~np.asarray(correct, bool), minlength=len(values))
    covered = np.cumsum(n_g)
    return covered / covered[-1], np.cumsum(e_g) / covered


def fig_risk_coverage(setting: pd.DataFrame, samples: pd.DataFrame | None, colours: dict[str, Any]) -> Any | None:
    """Fig. 7 of one setting (its table rows, with ``variant``); None without the samples table."""
    if samples is None:
        return None
    rows = {(r.run_id, int(r.point)): r for r in samples.itertuples(index=False)}
    fig = new_figure(7.5, 4.5)
    ax = fig.subplots()
    order = []
    for variant in [v for v in colours if v in set(setting["variant"])]:
        ok, conf = [], []
        for run_id, run in setting[setting["variant"] == variant].groupby("run_id", sort=True):
            run = run.sort_values("point")
            i = int(select(run["val_cost"].to_numpy(float), run["val_accuracy"].to_numpy(float), [RISK_BUDGET])[0])
            r = rows.get((run_id, i))
            if i >= 0 and r is not None:
                ok.append(r.correct)
                conf.append(r.confidence)
        if ok:
            cov, risk = risk_coverage(np.concatenate(ok), np.concatenate(conf))
            ax.plot(cov, 100 * risk, color=colours[variant], lw=1.5)
            order.append(variant)
    for _, run, exits in diagnostics.stage_runs(setting, samples)[:1]:
        if exits is not None and exits["exit_confidence"] is not None:
            K = int(run["num_exits"])
            last = diagnostics.exit_correct(exits["exit_correct"], K)[K - 1]
            cov, risk = risk_coverage(last, np.asarray(exits["exit_confidence"]).reshape(K, -1)[K - 1])
            ax.plot(cov, 100 * risk, color="0.3", ls="--", lw=1, label="backbone's classifier (seed 0)")
    if not order:
        return None
    ax.set_xlabel("coverage (share of test samples answered, most confident first)")
    ax.set_ylabel("risk: error rate of the answered (%)")
    ax.set_title(f"{setting_title(setting)}\npoints deployed at budget {RISK_BUDGET:.2f}, seeds pooled")
    method_legend(ax, order, colours)
    return fig
