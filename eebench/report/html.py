"""The leaderboard as one self-contained web page, ``index.html``: everything a reader needs in one
file that opens without a network (the styles, the scripts and the plotting library inlined).

Per setting (dataset, backbone):

- the leaderboard: one row per method variant, "mean ± se" cells (the mean over seeds and the
  bootstrap standard error of the test estimate, as in ``leaderboard.md``): test accuracy of the
  point deployed at every budget (the most accurate in bold, † where the paired bootstrap cannot
  separate a variant from it), the AUC, the cost to the backbone − 1 point, and the other figures
  of the deployed point (cost, ECE, conformal inefficiency, AUROC, AURC, oracle, headroom, ...) at
  one budget picked in a menu; a click on a column header sorts the rows by it;
- the accuracy-vs-cost figure (Vega-Lite, drawn by the inlined Vega bundle, SVG): every operating
  point (test accuracy vs test cost), the points deployed at the leaderboard's budgets
  highlighted, each variant's val-selected curve (the mean over seeds of the test accuracy of the
  point chosen on val at each budget, as in Fig. 2), and each variant's upper convex hull of the
  *test* points (the mean over seeds of each seed's hull), labelled as what it is: an optimistic
  reading, chosen on test, never deployed (``docs/decisions.md`` P1). Hovering a point shows its
  method, seed, setting (q, λ, β, ...), test accuracy ± its binomial standard error, cost, ECE,
  exit shares and the budgets it is deployed at;
- its provenance: backbone, weights sha256 and source, dataset and split sizes, package versions,
  git revisions, run count.

The page is a pure function of the tables and the pinned packages: element ids come from the
setting's name, JSON is written with sorted keys, nothing reads the clock, and the Vega bundle is
the one ``vl-convert-python`` ships (the same bytes for the same version), so ``eebench report``
writes it byte for byte again from the same table.
"""
from __future__ import annotations

import functools
import json
import math
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from eebench.paths import slug
from eebench.records import write_atomic
from eebench.report.figure_style import COST_LABEL, palette
from eebench.report.selection import select

PAGE_NAME = "index.html"
#: Per-budget figures of the leaderboard: name → (header, format, what it is); others show their name.
FIGURES: dict[str, tuple[str, str, str]] = {
    "accuracy": ("acc %", ".2f", "test accuracy of the point each run deploys at budget B (chosen on val)"),
    "cost": ("cost", ".3f", "test cost of the deployed point (normalised Mul-Adds; may exceed B by the val-test gap)"),
    "ece": ("ECE %", ".2f", "expected calibration error of the deployed point (15 equal-width bins)"),
    "inefficiency95": ("ineff95", ".2f", "mean split-conformal set size at alpha = 0.05 (classes)"),
    "auroc": ("AUROC %", ".2f", "AUROC of the answered confidence as a score of correctness"),
    "aurc": ("AURC %", ".2f", "area under the risk-coverage curve (lower is better)"),
    "oracle_accuracy": ("oracle %", ".2f", "best accuracy any exit policy reaches at mean cost <= B with the "
                                          "deployed point's exits (a bound, not ranked)"),
    "headroom": ("headroom", ".2f", "oracle minus accuracy (points)"),
    "measured_speedup": ("measured ×", ".2f", "the plain backbone's time over the runtime's (eebench latency)"),
    "many_shot_accuracy": ("many-shot %", ".2f", "accuracy on the classes with many training samples"),
    "medium_shot_accuracy": ("medium-shot %", ".2f", "accuracy on the classes with a medium number of training "
                                                    "samples"),
    "few_shot_accuracy": ("few-shot %", ".2f", "accuracy on the classes with few training samples")}
KNOB_NAMES = {"lambda": "λ", "beta": "β", "alpha": "α", "gamma": "γ"}
CURVE_KINDS = ("{sel}-selected: mean over seeds of the test accuracy deployed at each budget",
               "upper convex hull of the test points: optimistic (chosen on test), never deployed")
WIDTH, HEIGHT = 600, 360
#: Variant names longer than this are cut in the table (the whole name in its tooltip).
SHORT_NAME = 48
TIE = ' <span class="tie" title="not separable from the most accurate (paired bootstrap, 95 %)">†</span>'
NO_SAMPLES = ("Standard errors and ties are left empty: the per-sample arrays (samples_*.parquet) were not "
              "beside the operating-point table; a report from the run records (eebench report RUNS_DIR) writes them.")


def write_page(df: pd.DataFrame, samples: pd.DataFrame | None, board: pd.DataFrame, options: Any,
               path: Path) -> Path:
    """Write the page atomically.

    Args:
        df: the operating-point table (:mod:`eebench.report.table`) with its ``variant`` column.
        samples: the per-sample table (None: no standard errors; the page says so in one line).
        board: the leaderboard (:func:`eebench.report.leaderboard.leaderboard`) of ``df``.
        options: the :class:`~eebench.report.leaderboard.ReportOptions` it was computed with.
        path: where to write (``OUT/index.html``).

    Returns:
        ``path``.
    """
    write_atomic(Path(path), page(df, samples, board, options).encode())
    return Path(path)


def page(df: pd.DataFrame, samples: pd.DataFrame | None, board: pd.DataFrame, options: Any) -> str:
    """The page's HTML text (see the module doc)."""
    sel = options.selection
    sections, nav, specs = [], [], {}
    runs_with_samples = set() if samples is None else set(samples["run_id"].astype(str))
    for (ds, bb), g in board.groupby(["dataset", "backbone"], sort=False):
        key = slug(f"{ds}_{bb}").replace(".", "_")          # an id that is also a CSS selector
        setting = df[(df["dataset"] == ds) & (df["backbone"] == bb)]
        has_se = samples is not None and bool(set(setting["run_id"].astype(str)) & runs_with_samples)
        specs[f"fig-{key}"] = figure_spec(setting, [str(v) for v in g["variant"]], options)
        nav.append(f'<li><a href="#{key}">{escape(ds)} / {escape(bb)}</a></li>')
        note = (f'<p class="note">{escape(NO_SAMPLES)}</p>' if samples is not None and not has_se else "")
        sections.append(
            f'<section id="{key}" class="setting"><h2>{escape(ds)} / {escape(bb)}</h2>{note}'
            f'<p>{_backbone_line(g.iloc[0])}</p>{board_table(g, key, options)}'
            f'<div class="row"><figure><div id="fig-{key}" class="figure"></div><figcaption>{_caption(sel)}'
            f'</figcaption></figure>{provenance(setting)}</div></section>')
    head_note = f'<p class="note">{escape(NO_SAMPLES)}</p>' if samples is None else ""
    specs_js = _json(specs)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f'<title>eebench leaderboard</title>\n<style>{STYLE}</style>\n'
            f'<script>{_vega_bundle()}</script>\n</head>\n<body>\n<h1>eebench leaderboard</h1>\n{head_note}'
            f'<p>{_intro(options)}</p>\n<ul class="nav">{"".join(nav)}</ul>\n' + "\n".join(sections)
            + f'\n<script>const EEBENCH_SPECS = {specs_js};\n{SCRIPT}</script>\n</body>\n</html>\n')


# ---------------------------------------------------------------------------------------------
# the leaderboard table


def _label(b: float) -> str:
    """A budget as the board's columns name it (``leaderboard.budget_label``, which this module cannot
    import: the leaderboard imports it)."""
    return f"{b:.2f}"


def _num(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _true(x: Any) -> bool:
    """A tie flag of the board: True, False or None (undefined)."""
    return x is not None and not (isinstance(x, float) and math.isnan(x)) and bool(x)


def _cell(mean: Any, se: Any, fmt: str, attrs: str = "", bold: bool = False, after: str = "") -> str:
    """A "mean ± se" cell, sorted by the mean (``data-v``; empty where undefined)."""
    m, s = _num(mean), _num(se)
    if not math.isfinite(m):
        return f'<td data-v=""{attrs}>–</td>'
    text = f"<b>{m:{fmt}}</b>" if bold else f"{m:{fmt}}"
    se_text = f"± {s:{fmt}}" if math.isfinite(s) else ""
    return f'<td data-v="{m:.6g}"{attrs}>{text} <span class="se">{se_text}</span>{after}</td>'


def _per_budget_figures(board: pd.DataFrame, options: Any) -> list[str]:
    """The per-budget figures of the board other than accuracy, in column order."""
    first = _label(options.budgets[0])
    names = [c.removesuffix(f"_at_{first}_mean") for c in board.columns if c.endswith(f"_at_{first}_mean")]
    return [n for n in names if n != "accuracy"]


def board_table(g: pd.DataFrame, key: str, options: Any) -> str:
    """One setting's leaderboard as a sortable table (its rows of the board, in the board's order)."""
    labels = [_label(b) for b in options.budgets]
    shown = "0.50" if "0.50" in labels else labels[0]
    figures = _per_budget_figures(g, options)
    head = ['<th data-type="text">method</th>', "<th>seeds</th>"]
    head += [f'<th title="{FIGURES["accuracy"][2]}">acc %<br>@{b}</th>' for b in labels]
    head += ['<th title="mean val-selected test accuracy over the budgets of the common range">AUC %</th>',
             '<th title="test cost of the cheapest point (by val cost) within 1 point of the backbone\'s val accuracy">'
             'cost to<br>bb−1pt</th>']
    for b in labels:
        hidden = "" if b == shown else " hidden"
        head += [f'<th data-b="{b}"{hidden} title="{escape(FIGURES.get(f, (f, "", f))[2])}">'
                 f'{escape(FIGURES.get(f, (f, "", f))[0])}<br>@{b}</th>' for f in figures]
    best = {b: np.nanmax(g[f"accuracy_at_{b}_mean"].to_numpy(float)) if g[f"accuracy_at_{b}_mean"].notna().any()
            else math.nan for b in labels}
    rows = []
    for _, r in g.iterrows():
        name = str(r["variant"])
        short = name if len(name) <= SHORT_NAME else name[:SHORT_NAME - 2] + "…]"
        cells = [f'<td data-v="{escape(name)}" class="variant" title="{escape(name)}">{escape(short)}</td>',
                 f'<td data-v="{int(r["seeds"])}">{int(r["seeds"])}</td>']
        for b in labels:
            mean = _num(r[f"accuracy_at_{b}_mean"])
            bold = math.isfinite(mean) and mean == best[b]
            tied = not bold and _true(r.get(f"tied_with_best_at_{b}"))
            cells.append(_cell(mean, r[f"accuracy_at_{b}_se"], ".2f", bold=bold, after=TIE if tied else ""))
        cells.append(_cell(r["auc_mean"], r["auc_se"], ".2f"))
        cells.append(_cell(r["cost_to_backbone_minus_1pt_mean"], r["cost_to_backbone_minus_1pt_se"], ".3f"))
        for b in labels:
            hidden = "" if b == shown else " hidden"
            for f in figures:
                fmt = FIGURES.get(f, ("", ".2f", ""))[1]
                cells.append(_cell(r.get(f"{f}_at_{b}_mean"), r.get(f"{f}_at_{b}_se"), fmt, f' data-b="{b}"{hidden}'))
        rows.append(f'<tr data-variant="{escape(str(r["variant"]))}">{"".join(cells)}</tr>')
    menu = "".join(f'<option value="{b}"{" selected" if b == shown else ""}>{b}</option>' for b in labels)
    return (f'<div class="board"><label>other figures of the deployed point at budget '
            f'<select class="budget" data-table="board-{key}">{menu}</select></label>'
            f'<table id="board-{key}" class="sortable"><thead><tr>{"".join(head)}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def _backbone_line(first: pd.Series) -> str:
    lo, hi = _num(first.get("auc_range_lo")), _num(first.get("auc_range_hi"))
    auc = f"; AUC over budgets [{lo:.3f}, {hi:.2f}]" if math.isfinite(lo) else "; no common budget range for the AUC"
    se = _num(first["backbone_accuracy_se"])
    return (f"Backbone accuracy {_num(first['backbone_accuracy_mean']):.2f}"
            + (f" ± {se:.2f}" if math.isfinite(se) else "") + f" %{auc}.")


def _intro(options: Any) -> str:
    sel = escape(options.selection)
    return (f"Per setting, each run deploys at budget B (a mean normalised Mul-Add) the point with the best "
            f"{sel} accuracy among its points of {sel} cost ≤ B; the table gives that point's <em>test</em> figures: "
            f"mean over seeds <span class=\"se\">± the bootstrap standard error of the test estimate</span> (seeds "
            f"pooled, {int(options.replicates)} resamples). <b>Bold</b>: the most accurate at B; †: not separable "
            f"from it (paired bootstrap, 95 %). Click a column header to sort by it. Figures: hover a point for "
            f"its details; click a method in the legend to highlight it.")


def _caption(sel: str) -> str:
    return (f"Small markers: every operating point (test accuracy vs test cost); large markers: the points "
            f"deployed at the leaderboard's budgets. Solid: {escape(CURVE_KINDS[0].format(sel=sel))}. Dashed: "
            f"{escape(CURVE_KINDS[1])}. Grey dashed: the backbone alone.")


# ---------------------------------------------------------------------------------------------
# provenance


def _values(series: pd.Series) -> str:
    """The distinct values of a column of one row per run, with their run counts where they differ."""
    counts = series.astype(str).value_counts().sort_index()
    if len(counts) == 1:
        return escape(str(counts.index[0]))
    return "; ".join(f"{escape(str(v))} ({n} runs)" for v, n in counts.items())


def provenance(setting: pd.DataFrame) -> str:
    """The setting's provenance as a definition list (the distinct values over its runs)."""
    runs = setting.drop_duplicates("run_id")
    first = runs.iloc[0]
    items = [("runs", f"{len(runs)} (" + ", ".join(f"{escape(str(v))}: {n}" for v, n in
                                                    runs.groupby("variant", sort=False).size().items()) + ")")]
    items.append(("backbone", f"{escape(str(first['backbone']))}, {int(first['num_exits'])} exits, "
                              f"{int(first['num_classes'])} classes, {_num(first['backbone_muladds']) / 1e6:.2f} M "
                              f"Mul-Adds a sample"))
    items.append(("weights sha256", f"<code>{_values(runs['weights_sha256'])}</code>"))
    items.append(("weights source", _values(runs["weights_source"])))
    train = runs["train_class_counts"].map(lambda c: int(np.nansum(np.asarray(c if c is not None else [], float))))
    split = {k.removeprefix("p_dataset_"): _values(runs[k]) for k in sorted(runs.columns)
             if k.startswith("p_dataset_") and runs[k].notna().any()}
    sizes = (f"train {_values(train)} samples, " if (train > 0).all() else "") + f"test {_values(runs['n_test'])}"
    items.append(("dataset", f"{escape(str(first['dataset']))}: {sizes} samples (indices sha256 <code>"
                             f"{_values(runs['test_sha256'])}</code>); "
                  + ", ".join(f"{escape(k)} {v}" for k, v in split.items())))
    items.append(("packages", ", ".join(f"{escape(c.removeprefix('version_'))} {_values(runs[c])}"
                                        for c in sorted(runs.columns) if c.startswith("version_"))))
    items.append(("git revision", f"<code>{_values(runs['git_revision'])}</code>"))
    items.append(("device", _values(runs["device"])))
    created = sorted(runs["created"].astype(str))
    items.append(("created", escape(created[0] if created[0] == created[-1] else f"{created[0]} … {created[-1]}")))
    body = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items)
    return f'<div class="provenance"><h3>provenance</h3><dl>{body}</dl></div>'


# ---------------------------------------------------------------------------------------------
# the figure


def upper_hull(cost: np.ndarray, accuracy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertices of the upper convex hull of points (Andrew's monotone chain), from the cheapest
    point up to the first most accurate one: cost and accuracy strictly increasing, concave.

    Args:
        cost, accuracy: ``[n]`` each (NaN: left out).

    Returns:
        ``(hull_cost, hull_accuracy)``, ``[m]`` each; empty for no point.
    """
    c, a = np.asarray(cost, float), np.asarray(accuracy, float)
    ok = np.isfinite(c) & np.isfinite(a)
    hull: list[tuple[float, float]] = []
    for x, y in sorted(zip(c[ok].tolist(), a[ok].tolist()), key=lambda p: (p[0], -p[1])):
        if hull and hull[-1][0] == x:           # same cost: the most accurate stays
            continue
        while len(hull) >= 2:
            (x0, y0), (x1, y1) = hull[-2], hull[-1]
            if (x1 - x0) * (y - y0) - (y1 - y0) * (x - x0) >= 0:      # hull[-1] on or below the chord
                hull.pop()
            else:
                break
        hull.append((x, y))
    if not hull:
        return np.empty(0), np.empty(0)
    hc, ha = np.array(hull).T
    peak = int(np.argmax(ha))
    return hc[:peak + 1], ha[:peak + 1]


def _runs(g: pd.DataFrame) -> list[pd.DataFrame]:
    return [r.sort_values("point") for _, r in g.groupby("run_id", sort=True)]


def selected_curve(g: pd.DataFrame, columns: tuple[str, str]) -> pd.DataFrame:
    """One variant's curve: at each budget, the test accuracy (%) of the point each run deploys
    (chosen on ``columns``, the selection split's cost and accuracy), averaged over the runs where
    every run deploys one and the budget is within its test costs (as Fig. 2). The mean of step
    functions is a step function: rows only where it changes, and its last budget (``budget``,
    ``accuracy``; drawn step-after)."""
    runs = _runs(g)
    grid = np.unique(np.concatenate([r[columns[0]].to_numpy(float) for r in runs]
                                    + [[r["cost"].max() for r in runs]]))
    grid = grid[np.isfinite(grid)]
    values = []
    for r in runs:
        idx = select(r[columns[0]].to_numpy(float), r[columns[1]].to_numpy(float), grid)
        v = 100 * r["accuracy"].to_numpy(float)[np.clip(idx, 0, None)]
        values.append(np.where((idx < 0) | (grid > r["cost"].max()), np.nan, v))
    v = np.stack(values)
    ok = np.isfinite(v).all(0)
    x, y = grid[ok], v[:, ok].mean(0)
    keep = np.ones(len(x), bool)
    keep[1:-1] = np.diff(y)[:-1] != 0 if len(x) > 2 else True
    return pd.DataFrame({"budget": x[keep], "accuracy": y[keep]})


def hull_curve(g: pd.DataFrame) -> pd.DataFrame:
    """One variant's upper convex hull of the test points (%): each run's hull, averaged over the
    runs on the costs where every hull is defined (``cost``, ``accuracy``; drawn linear)."""
    hulls = [upper_hull(r["cost"].to_numpy(float), 100 * r["accuracy"].to_numpy(float)) for r in _runs(g)]
    hulls = [h for h in hulls if len(h[0])]
    if not hulls:
        return pd.DataFrame({"cost": [], "accuracy": []})
    lo, hi = max(h[0][0] for h in hulls), min(h[0][-1] for h in hulls)
    grid = np.unique(np.concatenate([h[0] for h in hulls] + [[lo, hi]]))
    grid = grid[(grid >= lo) & (grid <= hi)]
    return pd.DataFrame({"cost": grid, "accuracy": np.mean([np.interp(grid, hc, ha) for hc, ha in hulls], axis=0)})


def _setting_text(setting: str) -> str:
    try:
        knobs = json.loads(setting)
    except (TypeError, ValueError):
        return str(setting)
    return ", ".join(f"{KNOB_NAMES.get(k, k)}={v}" for k, v in knobs.items()) if isinstance(knobs, dict) else str(knobs)


def point_rows(setting: pd.DataFrame, options: Any) -> list[dict[str, Any]]:
    """One record per operating point, with what its tooltip shows."""
    out = []
    for r in _runs(setting):
        idx = select(r[options.columns[0]].to_numpy(float), r[options.columns[1]].to_numpy(float), options.budgets)
        n = int(r["n_test"].iloc[0])
        for i, (_, p) in enumerate(r.iterrows()):
            acc = float(p["accuracy"])
            se = f" ± {100 * math.sqrt(max(acc * (1 - acc), 0.0) / n):.2f} (binomial se)" if n > 0 else ""
            shares = " / ".join(f"{100 * s:.0f}" for s in np.asarray(_list(p["exit_shares"]), float))
            at = ", ".join(_label(b) for b, j in zip(options.budgets, idx) if j == i)
            out.append({"method": str(p["variant"]), "seed": int(p["seed"]), "setting": _setting_text(p["setting"]),
                        "cost": round(float(p["cost"]), 4), "accuracy": round(100 * acc, 3),
                        "test accuracy %": f"{100 * acc:.2f}{se}",
                        "ECE %": _round(100 * _num(p["ece"]), 2), "exit shares % (exits 1…K)": shares,
                        "val accuracy %": _round(100 * _num(p["val_accuracy"]), 2),
                        "val cost": _round(_num(p["val_cost"]), 4), "deployed at budgets": at or "–"})
    return out


def _list(x: Any) -> list[float]:
    return [] if x is None else list(x)


def _round(x: float, digits: int) -> float | None:
    return round(x, digits) if math.isfinite(x) else None


def figure_spec(setting: pd.DataFrame, variants: list[str], options: Any) -> dict[str, Any]:
    """The Vega-Lite specification of one setting's figure (altair, validated): named layers
    ``curves`` (one line per variant), ``hulls``, ``points``, ``deployed`` and ``backbone``."""
    import altair as alt

    colours = palette(variants)
    hexes = ["#{:02x}{:02x}{:02x}".format(*(int(round(255 * c)) for c in colours[v][:3])) for v in variants]
    kinds = [CURVE_KINDS[0].format(sel=options.selection), CURVE_KINDS[1]]
    curves, hulls = [], []
    for v in variants:
        g = setting[setting["variant"] == v]
        c = selected_curve(g, options.columns).rename(columns={"budget": "cost"})
        curves.append(c.assign(method=v, curve=kinds[0], seeds=int(g["seed"].nunique())))
        hulls.append(hull_curve(g).assign(method=v, curve=kinds[1]))
    curves_df, hulls_df = (pd.concat(d, ignore_index=True).round({"cost": 4, "accuracy": 3}) for d in (curves, hulls))
    pick = alt.selection_point(name="pick", fields=["method"], bind="legend")
    colour = alt.Color("method:N", scale=alt.Scale(domain=variants, range=hexes), sort=variants,
                       legend=alt.Legend(title="method", orient="right", labelLimit=400))
    dash = alt.StrokeDash("curve:N", scale=alt.Scale(domain=kinds, range=[[1, 0], [5, 3]]),
                          legend=alt.Legend(title="curves", orient="bottom", direction="vertical", labelLimit=700))
    fade = alt.condition(pick, alt.value(1.0), alt.value(0.15))
    x = alt.X("cost:Q", title=f"{COST_LABEL}: the budget for the curves, the test cost for the points",
              scale=alt.Scale(zero=False))
    y = alt.Y("accuracy:Q", title="test accuracy (%)", scale=alt.Scale(zero=False))
    tips = ["method:N", "seed:Q", "setting:N", "test accuracy %:N",
            alt.Tooltip("cost:Q", title="test cost", format=".3f"), "ECE %:Q", "exit shares % (exits 1…K):N",
            "val accuracy %:Q", "val cost:Q", "deployed at budgets:N"]
    line_tips = ["method:N", "curve:N", alt.Tooltip("cost:Q", title="budget or test cost", format=".3f"),
                 alt.Tooltip("accuracy:Q", title="test accuracy %", format=".2f")]
    lines = alt.Chart(curves_df).mark_line(interpolate="step-after", strokeWidth=2).encode(
        x=x, y=y, color=colour, strokeDash=dash, opacity=fade, tooltip=[*line_tips, "seeds:Q"])
    bb = pd.DataFrame({"backbone accuracy %": [round(100 * float(setting["backbone_accuracy"].mean()), 3)]})
    layers = [alt.Chart(bb).mark_rule(color="#555555", strokeDash=[6, 3]).encode(      # under the rest
        y="backbone accuracy %:Q", tooltip=["backbone accuracy %:Q"]).properties(name="backbone"),
        lines.add_params(pick).properties(name="curves")]
    if len(hulls_df):
        layers.append(alt.Chart(hulls_df).mark_line(strokeWidth=1.4).encode(
            x=x, y=y, color=colour, strokeDash=dash, opacity=fade, tooltip=line_tips).properties(name="hulls"))
    points = alt.Chart(pd.DataFrame(point_rows(setting, options))).encode(x=x, y=y, color=colour, tooltip=tips)
    faint = alt.condition(pick, alt.value(0.45), alt.value(0.06))
    layers.append(points.mark_point(filled=True, size=28).encode(opacity=faint).properties(name="points"))
    layers.append(points.transform_filter(alt.datum["deployed at budgets"] != "–").mark_point(
        filled=True, size=110, stroke="white", strokeWidth=1).encode(opacity=fade).properties(name="deployed"))
    return alt.layer(*layers).properties(width=WIDTH, height=HEIGHT).to_dict()


# ---------------------------------------------------------------------------------------------
# the page's own bytes


def _json(obj: Any) -> str:
    """JSON for a <script>: sorted keys, no NaN, no ``</`` (which would end the script)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).replace("</", "<\\/")


@functools.lru_cache(maxsize=1)
def _vega_bundle() -> str:
    """Vega, Vega-Lite and vega-embed as one script (the bundle ``vl-convert-python`` ships for the
    Vega-Lite version altair writes), which sets ``window.vegaEmbed``."""
    import altair as alt
    import vl_convert

    js = vl_convert.javascript_bundle(vl_version="v" + ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2]))
    return js.replace("</script", "<\\/script")


STYLE = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:1em 1.5em;color:#222}
h1{font-size:1.6em;margin:.2em 0}h2{font-size:1.3em;margin:1.4em 0 .3em;border-bottom:1px solid #ccc}
h3{font-size:1em;margin:.2em 0}.nav{display:flex;gap:1.2em;padding:0;list-style:none}
.note{background:#fff4d6;border-left:4px solid #e0a800;padding:.3em .6em}
table.sortable{border-collapse:collapse;margin:.4em 0;font-size:13px;font-variant-numeric:tabular-nums}
table.sortable th{cursor:pointer;background:#f2f2f2;padding:.2em .4em;border-bottom:2px solid #999;
vertical-align:bottom;user-select:none}
table.sortable th[aria-sort=ascending]::after{content:" ▲"}
table.sortable th[aria-sort=descending]::after{content:" ▼"}
table.sortable td{padding:.2em .4em;border-bottom:1px solid #e4e4e4;text-align:right;white-space:nowrap}
table.sortable td.variant{text-align:left}.se{color:#777;font-size:.85em}.tie{color:#b35900}
.board{overflow-x:auto}.board label{font-size:.9em;color:#444}
.row{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}figure{margin:0}
figcaption{max-width:760px;font-size:.85em;color:#555}
.provenance{max-width:440px;font-size:.85em}.provenance dl{display:grid;grid-template-columns:max-content 1fr;
gap:.1em .8em;margin:0}.provenance dt{font-weight:600}.provenance dd{margin:0;overflow-wrap:anywhere}
"""

SCRIPT = """
function sortTable(th) {
  const table = th.closest("table"), col = th.cellIndex, body = table.tBodies[0];
  const text = th.dataset.type === "text";
  const dir = th.getAttribute("aria-sort") === (text ? "ascending" : "descending") ? -1 : 1;
  const asc = text ? dir : -dir;
  const key = (row) => { const v = row.cells[col].dataset.v;
    return v === "" ? null : (text ? v : Number(v)); };
  const rows = Array.from(body.rows).map((row, i) => [row, key(row), i]);
  rows.sort((a, b) => a[1] === null || b[1] === null ? (a[1] === null) - (b[1] === null) || a[2] - b[2]
    : a[1] < b[1] ? -asc : a[1] > b[1] ? asc : a[2] - b[2]);
  rows.forEach((r) => body.appendChild(r[0]));
  table.querySelectorAll("th").forEach((h) => h.removeAttribute("aria-sort"));
  th.setAttribute("aria-sort", asc > 0 ? "ascending" : "descending");
}
document.querySelectorAll("table.sortable th").forEach((th) => th.addEventListener("click", () => sortTable(th)));
document.querySelectorAll("select.budget").forEach((menu) => menu.addEventListener("change", () => {
  document.getElementById(menu.dataset.table).querySelectorAll("[data-b]").forEach((c) => {
    c.hidden = c.dataset.b !== menu.value; });
}));
window.EEBENCH_VIEWS = {};
window.EEBENCH_READY = Promise.all(Object.entries(EEBENCH_SPECS).map(([id, spec]) =>
  vegaEmbed(document.getElementById(id), spec, {renderer: "svg", actions: false})
    .then((r) => { window.EEBENCH_VIEWS[id] = r.view; })));
"""
