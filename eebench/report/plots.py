"""The figures of the JEI-DNN paper (Regol, Chataoui & Coates, ICLR 2024) for every setting, drawn
with seaborn from the operating-point table of :mod:`eebench.report.table`; seeds as shaded bands
(mean ± one standard deviation, ddof=1, drawn only where every seed is defined). Every curve is
read the way the leaderboard reads it: at each budget, the point chosen on val
(:func:`eebench.report.selection.select`), drawn with its test figures.

Per setting, under ``OUT/<dataset>_<backbone>/``, each as PNG and PDF:

- ``fig2_accuracy_vs_cost``: test accuracy vs the budget (normalised Mul-Add) for every method: for
  each seed, the test accuracy of the point chosen on val at each budget of a common grid (a step
  curve, drawn from the seed's cheapest to its costliest point); the operating points of all seeds
  (test accuracy vs test cost) as faint markers; the backbone's accuracy dashed (Fig. 2).
- ``fig3_exit_decomposition``: at one operating point per method, the **point deployed at budget
  0.5** (chosen on val; the cheapest point where none fits), the
  accuracy of each IM (a) on the samples that exit there and (b) on all samples, marker area ∝
  the exit's share of the samples, the point's overall accuracy dotted (Fig. 3).
- ``fig4_ece_per_im``: ECE of each IM on all samples at the same point (Fig. 4).
- ``fig5_uncertainty``: (a) ECE and (b) conformal inefficiency at α = 0.05 of the point
  deployed at each budget, vs the budget (operating points faint); (c) empirical α̂ = 1 − coverage
  vs requested α, averaged over the operating points of a run, with the diagonal (Fig. 5).
- ``fig6_measured_time`` (settings with runs timed by ``eebench latency``): accuracy of the timed
  points against Mul-Add cost (a) and against measured time per sample (b).

And ``OUT/fig2_accuracy_vs_cost_all``: Fig. 2 of every setting side by side (the headline figure).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from eebench.report.leaderboard import variant_names
from eebench.report.diagnostic_plots import draw_oracle, fig_risk_coverage, oracle_curve
from eebench.report.figure_style import (COST_LABEL, legend_outside, marker_map, method_legend, new_figure, palette,
                                          save, sd_band, setting_title, style)
from eebench.report.selection import select

log = logging.getLogger(__name__)

#: Budget of the operating point of Fig. 3 and Fig. 4.
FIG3_BUDGET = 0.5
GRID_POINTS = 300
















def _complete(long: pd.DataFrame, x: str, y: str, seeds: dict[str, int]) -> pd.DataFrame:
    """Rows at the x values where every seed of the variant has a finite y (bands need them all)."""
    ok = long[np.isfinite(long[y].to_numpy(float))]
    n = ok.groupby(["variant", x])[y].transform("size")
    return ok[n.to_numpy() == ok["variant"].map(seeds).to_numpy()]


def _runs(setting: pd.DataFrame):
    for _, g in setting.groupby("run_id", sort=True):
        yield g.sort_values("point").reset_index(drop=True)


def _grid(setting: pd.DataFrame) -> np.ndarray:
    """The common budget grid of a setting: evenly spaced, plus the val cost of every operating point
    (where the deployed point changes, so the step curves are exact)."""
    cost = np.concatenate([setting["cost"].to_numpy(float), setting["val_cost"].to_numpy(float)])
    return np.union1d(np.linspace(np.nanmin(cost), np.nanmax(cost), GRID_POINTS), setting["val_cost"].to_numpy(float))


def _deployed(g: pd.DataFrame, budgets: np.ndarray) -> np.ndarray:
    """The point chosen on val at each budget (−1: none), as the leaderboard chooses it."""
    return select(g["val_cost"].to_numpy(float), g["val_accuracy"].to_numpy(float), budgets)


def deployed_curves(setting: pd.DataFrame, columns: dict[str, float]) -> pd.DataFrame:
    """Long table (variant, seed, cost, <column>...) of the test figures of the point deployed at
    each budget of a common grid, times the given scale; NaN below the run's cheapest and above its
    costliest point."""
    grid = _grid(setting)
    rows = []
    for g in _runs(setting):
        idx = _deployed(g, grid)
        part = {"variant": g["variant"].iloc[0], "seed": g["seed"].iloc[0], "cost": grid}
        for col, scale in columns.items():
            v = scale * g[col].to_numpy(float)[np.clip(idx, 0, None)]
            v[(idx < 0) | (grid > g["cost"].max())] = np.nan
            part[col] = v
        rows.append(pd.DataFrame(part))
    return pd.concat(rows, ignore_index=True)


def accuracy_curves(setting: pd.DataFrame) -> pd.DataFrame:
    """Long table (variant, seed, cost, accuracy %) of each run's val-selected test accuracy."""
    return deployed_curves(setting, {"accuracy": 100.0})


def chosen_points(setting: pd.DataFrame, budget: float = FIG3_BUDGET) -> pd.DataFrame:
    """One row per run: its point deployed at ``budget`` (the cheapest by val cost where none fits)."""
    rows = []
    for g in _runs(setting):
        i = int(_deployed(g, np.array([budget]))[0])
        rows.append(g.iloc[i if i >= 0 else int(np.argmin(g["val_cost"].to_numpy(float)))])
    return pd.DataFrame(rows).reset_index(drop=True)


def per_exit(points: pd.DataFrame) -> pd.DataFrame:
    """Long table (variant, seed, exit 1..K, share, exit_accuracy %, im_accuracy %, im_ece %)."""
    rows = []
    for _, p in points.iterrows():
        K = len(p["exit_shares"])
        rows.append(pd.DataFrame({"variant": p["variant"], "seed": p["seed"], "exit": np.arange(1, K + 1),
                                  "share": np.asarray(p["exit_shares"], float),
                                  "exit_accuracy": 100 * np.asarray(p["exit_accuracy"], float),
                                  "im_accuracy": 100 * np.asarray(p["im_accuracy"], float),
                                  "im_ece": 100 * np.asarray(p["im_ece"], float)}))
    return pd.concat(rows, ignore_index=True)








def draw_accuracy(ax: Any, setting: pd.DataFrame, colours: dict[str, Any], legend: bool = True,
                  oracle: pd.DataFrame | None = None) -> None:
    """Fig. 2 on ``ax``: budget curves (mean ± std band over seeds), points, backbone accuracy, and
    the shared IM stage's oracle bound where ``oracle`` (:func:`~eebench.report.diagnostic_plots.oracle_curve`) is given."""
    import seaborn as sns

    seeds = setting.groupby("variant")["seed"].nunique().to_dict()
    order = [v for v in colours if v in seeds]
    curves = _complete(accuracy_curves(setting), "cost", "accuracy", seeds)
    pts = setting.assign(acc=100 * setting["accuracy"])
    sns.scatterplot(data=pts, x="cost", y="acc", hue="variant", hue_order=order, palette=colours, style="variant",
                    style_order=order, markers=marker_map(colours), s=20, alpha=0.55, linewidth=0, legend=False,
                    ax=ax)
    sns.lineplot(data=curves, x="cost", y="accuracy", hue="variant", hue_order=order, palette=colours,
                 errorbar=sd_band(100.0), linewidth=1.6, legend=False, ax=ax)
    bb = 100 * setting["backbone_accuracy"].mean()
    ax.axhline(bb, color="0.3", ls="--", lw=1, label="backbone")
    draw_oracle(ax, oracle)
    lo = np.nanmin(curves["accuracy"]) if len(curves) else pts["acc"].min()
    ax.set_ylim(max(lo - 2, pts["acc"].min() - 1, 0), min(100, max(bb, pts["acc"].max()) + 1.5))
    ax.set_xlabel(f"budget: {COST_LABEL}")
    ax.set_ylabel("test accuracy of the point chosen on val (%)")
    ax.set_title(setting_title(setting))
    if legend:
        method_legend(ax, order, colours)


def fig_accuracy(setting: pd.DataFrame, colours: dict[str, Any], oracle: pd.DataFrame | None = None) -> Any:
    """Fig. 2 of one setting (its rows of the table, with ``variant``): a matplotlib Figure."""
    fig = new_figure(7.5, 4.5)
    draw_accuracy(fig.subplots(), setting, colours, oracle=oracle)
    return fig


def fig_exit_decomposition(setting: pd.DataFrame, colours: dict[str, Any]) -> Any:
    """Fig. 3 of one setting: per-IM accuracy on the exited samples (a) and on all samples (b) at
    each run's deployed point of budget :data:`FIG3_BUDGET`, marker area ∝ exit share."""
    import seaborn as sns

    points = chosen_points(setting)
    long = per_exit(points)
    seeds = setting.groupby("variant")["seed"].nunique().to_dict()
    order = [v for v in colours if v in seeds]
    means = long.groupby(["variant", "exit"], as_index=False)[["share", "exit_accuracy", "im_accuracy"]].mean()
    overall = points.groupby("variant")[["accuracy", "cost"]].mean()
    max_share = float(means["share"].max()) or 1.0     # marker area ∝ share, the largest share largest
    fig = new_figure(13, 4.6)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, col, title in ((axes[0], "exit_accuracy", "(a) accuracy of IM l on the samples exiting at l"),
                           (axes[1], "im_accuracy", "(b) accuracy of IM l on all samples")):
        sns.lineplot(data=long, x="exit", y=col, hue="variant", hue_order=order, palette=colours,
                     errorbar=sd_band(100.0), linewidth=1.2, legend=False, ax=ax)
        sns.scatterplot(data=means[means["share"] > 0], x="exit", y=col, hue="variant", hue_order=order,
                        palette=colours, size="share", sizes=(0, 320), size_norm=(0, max_share), alpha=0.8,
                        legend=col == "im_accuracy", ax=ax)
        for v in order:
            ax.axhline(100 * overall.loc[v, "accuracy"], color=colours[v], ls=":", lw=1.2)
        ax.set_xlabel("exit l")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = axes[1].get_legend_handles_labels()
    if axes[1].get_legend() is not None:
        axes[1].get_legend().remove()
    labels = [f"{lab} (cost {overall.loc[lab, 'cost']:.2f})" if lab in overall.index else
              {"share": "exit share", "variant": "method"}.get(lab, lab) for lab in labels]
    axes[1].legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize="small")
    fig.suptitle(f"{setting_title(setting)}: point deployed at budget {FIG3_BUDGET:.2f} (chosen on val: most accurate "
                 f"with val cost ≤ {FIG3_BUDGET:.2f})\nmarker area ∝ share of samples exiting at l; dotted: overall "
                 f"accuracy")
    return fig


def fig_ece_per_im(setting: pd.DataFrame, colours: dict[str, Any]) -> Any | None:
    """Fig. 4 of one setting: ECE (%) of each IM on all samples at the point of Fig. 3; None when
    the records predate ``im_ece``."""
    import seaborn as sns

    long = per_exit(chosen_points(setting))
    if not np.isfinite(long["im_ece"]).any():
        log.warning("%s: the records have no im_ece (written before it existed); Fig. 4 skipped", setting_title(setting))
        return None
    seeds = setting.groupby("variant")["seed"].nunique().to_dict()
    order = [v for v in colours if v in seeds]
    fig = new_figure(7.5, 4.5)
    ax = fig.subplots()
    sns.lineplot(data=long, x="exit", y="im_ece", hue="variant", hue_order=order, palette=colours,
                 errorbar=sd_band(100.0), marker="o", markersize=4, linewidth=1.4, ax=ax)
    ax.set_xlabel("exit l")
    ax.set_ylabel("ECE of IM l on all samples (%)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"{setting_title(setting)}\nat the deployed point of budget {FIG3_BUDGET:.2f}")
    legend_outside(ax)
    return fig


def alpha_curves(setting: pd.DataFrame) -> pd.DataFrame:
    """Long table (variant, seed, alpha, alpha_hat): 1 − coverage averaged over a run's points."""
    rows = []
    for g in _runs(setting):
        alpha = np.asarray(g["conformal_alpha"].iloc[0], float)
        if alpha.size == 0:
            continue
        cover = np.stack([np.asarray(c, float) for c in g["conformal_coverage"]])
        rows.append(pd.DataFrame({"variant": g["variant"].iloc[0], "seed": g["seed"].iloc[0], "alpha": alpha,
                                  "alpha_hat": 1 - cover.mean(0)}))
    if not rows:
        return pd.DataFrame(columns=["variant", "seed", "alpha", "alpha_hat"])
    return pd.concat(rows, ignore_index=True)


def fig_uncertainty(setting: pd.DataFrame, colours: dict[str, Any]) -> Any:
    """Fig. 5 of one setting: ECE and inefficiency at 95 % coverage of the deployed point vs the
    budget, and empirical α̂ vs requested α."""
    import seaborn as sns

    seeds = setting.groupby("variant")["seed"].nunique().to_dict()
    order = [v for v in colours if v in seeds]
    curves = deployed_curves(setting, {"ece": 100.0, "inefficiency_at_95": 1.0})
    pts = setting.assign(ece_pct=100 * setting["ece"])
    fig = new_figure(17, 4.6)
    axes = fig.subplots(1, 3)
    for ax, col, pcol, ylabel, title in (
            (axes[0], "ece", "ece_pct", "ECE (%)", "(a) ECE vs cost"),
            (axes[1], "inefficiency_at_95", "inefficiency_at_95", "mean set size at α = 0.05",
             "(b) conformal inefficiency vs cost")):
        sns.scatterplot(data=pts, x="cost", y=pcol, hue="variant", hue_order=order, palette=colours,
                        style="variant", style_order=order, markers=marker_map(colours), s=14, alpha=0.3,
                        linewidth=0, legend=False, ax=ax)
        sns.lineplot(data=_complete(curves, "cost", col, seeds), x="cost", y=col, hue="variant", hue_order=order,
                     palette=colours, errorbar=sd_band(), linewidth=1.4, legend=False, ax=ax)
        ax.set_xlabel(f"budget: {COST_LABEL}")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
    ax = axes[2]
    alphas = alpha_curves(setting)
    if len(alphas):
        sns.lineplot(data=alphas, x="alpha", y="alpha_hat", hue="variant", hue_order=order, palette=colours,
                     errorbar=sd_band(1.0), marker="o", markersize=4, linewidth=1.4, ax=ax)
        lim = [0, float(max(alphas["alpha"].max(), np.nanmax(alphas["alpha_hat"]))) * 1.05]
        ax.plot(lim, lim, color="0.3", ls="--", lw=1, label="α̂ = α")
        ax.set_xlim(lim)
        ax.set_ylim(lim)
    ax.set_xlabel("requested α")
    ax.set_ylabel("empirical α̂ = 1 − coverage")
    ax.set_title("(c) α̂ vs α (mean over operating points)")
    legend_outside(ax)
    fig.suptitle(f"{setting_title(setting)}\n(a), (b): the point deployed at each budget (chosen on val: most accurate "
                 f"with val cost ≤ budget); faint markers: every operating point")
    return fig


def fig_measured(setting: pd.DataFrame, colours: dict[str, Any]) -> Any:
    """Accuracy against Mul-Add cost (a) beside accuracy against measured time per sample (b), for
    the operating points ``eebench latency`` timed; None where no run of the setting was timed."""
    import seaborn as sns

    if "measured_s_per_sample" not in setting.columns or setting["measured_s_per_sample"].isna().all():
        return None
    timed = setting[setting["measured_s_per_sample"].notna()]
    timed = timed.assign(ms=1000 * timed["measured_s_per_sample"], acc=100 * timed["accuracy"],
                         plain_ms=1000 * timed["measured_s_per_sample"] * timed["measured_speedup"])
    order = [v for v in colours if v in set(timed["variant"])]
    fig = new_figure(13, 4.6)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, x, label in ((axes[0], "cost", f"{COST_LABEL}"), (axes[1], "ms", "measured time per sample (ms)")):
        sns.lineplot(data=timed.sort_values(x), x=x, y="acc", hue="variant", hue_order=order, palette=colours,
                     style="variant", style_order=order, markers=marker_map(colours), dashes=False, units="run_id",
                     estimator=None, linewidth=1.2, legend=False, ax=ax)
        ax.axhline(100 * setting["backbone_accuracy"].mean(), color="0.3", ls="--", lw=1)
        ax.set_xlabel(label)
    axes[1].axvline(float(timed["plain_ms"].median()), color="0.3", ls=":", lw=1)
    axes[0].set_ylabel("test accuracy (%)")
    first = timed.iloc[0]
    axes[0].set_title("(a) against the counted cost")
    axes[1].set_title(f"(b) against the measured time ({first['latency_device']}, batch "
                      f"{int(first['latency_batch_size'])}; dotted: plain backbone)")
    method_legend(axes[1], order, colours)
    fig.suptitle(f"{setting_title(setting)}: the operating points timed by eebench latency (dashed: backbone accuracy)")
    return fig


def fig_accuracy_all(df: pd.DataFrame, colours: dict[str, Any], oracles: dict[tuple, Any] | None = None) -> Any:
    """Fig. 2 of every setting side by side, one shared legend."""
    settings = list(df.groupby(["dataset", "backbone"], sort=True))
    n = len(settings)
    fig = new_figure(5.2 * n + 2.2, 4.4)
    axes = np.atleast_1d(fig.subplots(1, n))
    for i, (ax, (key, setting)) in enumerate(zip(axes, settings)):
        draw_accuracy(ax, setting, colours, legend=False, oracle=(oracles or {}).get(key))
        if i:
            ax.set_ylabel("")
    method_legend(axes[-1], list(colours), colours)     # every method of every setting
    return fig


def setting_dir(out_dir: Path, dataset: str, backbone: str) -> Path:
    """``out_dir/<dataset>_<backbone>`` (as file-name components): where the figures of a setting go."""
    from eebench.paths import slug

    return Path(out_dir) / f"{slug(dataset)}_{slug(backbone)}"


def plot_all(df: pd.DataFrame, out_dir: Path, samples: pd.DataFrame | None = None) -> list[Path]:
    """Every figure of the module doc for every setting of the table, and those of
    :mod:`eebench.report.diagnostic_plots` where the samples table is given.

    Args:
        df: the operating-point table (:func:`eebench.report.table.read_table`).
        out_dir: root folder; figures go to ``out_dir/<dataset>_<backbone>/<figure>.{png,pdf}``.
        samples: the samples table (:func:`eebench.report.table.read_samples`), or None.

    Returns:
        the paths written.
    """
    df = df.assign(variant=variant_names(df))
    colours = palette(df["variant"].tolist())
    written: list[Path] = []
    oracles = {}
    for (ds, bb), setting in df.groupby(["dataset", "backbone"], sort=True):
        folder = setting_dir(out_dir, ds, bb)
        oracles[(ds, bb)] = oracle_curve(setting, samples)
        for name, make in (("fig2_accuracy_vs_cost", lambda s, c: fig_accuracy(s, c, oracles[(ds, bb)])),
                           ("fig3_exit_decomposition", fig_exit_decomposition), ("fig4_ece_per_im", fig_ece_per_im),
                           ("fig5_uncertainty", fig_uncertainty), ("fig6_measured_time", fig_measured),
                           ("fig7_risk_coverage", lambda s, c: fig_risk_coverage(s, samples, c))):
            with style():
                fig = make(setting, colours)
                if fig is not None:
                    written += save(fig, folder / name)
    with style():
        written += save(fig_accuracy_all(df, colours, oracles), Path(out_dir) / "fig2_accuracy_vs_cost_all")
    return written
