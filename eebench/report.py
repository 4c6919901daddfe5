"""Run records → one long-format table of operating points → leaderboard CSVs.

The table (``operating_points.parquet``) has one row per operating point of every run: the keys
(``dataset``, ``backbone``, ``method``, ``seed``, ``run_id``, ``point``), the point's setting
(``setting`` as JSON and one ``p_setting_<knob>`` column per knob), its metrics on ``test``
(``accuracy``, ``cost``, ``muladds``, ``ece``, ``ece_mass``, ``inefficiency_at_95``, the
``val_*`` figures), the per-exit arrays as list columns (``exit_shares``, ``exit_accuracy``,
``im_accuracy``, ``im_ece``, ``conformal_alpha``, ``conformal_inefficiency``,
``conformal_coverage``), the run's parameters (``p_method_<param>``, ``p_dataset_<param>``, in
the manner of benchopt), the backbone's figures (``backbone_accuracy``, ``backbone_muladds``,
``num_exits``, ``exit_costs``, ...) and provenance (``git_revision``, ``created``, ``device``,
``version_<package>``). It is the single source of the leaderboard and of every figure, so both
can be rebuilt from it without the run records.

The accuracy–cost curve of a run is the **budget curve** A(c): the best accuracy a deployment
can reach at a mean normalised cost of at most c, mixing operating points. Routing a fraction t
of the inputs through point i and the rest through point j costs t·c_i + (1−t)·c_j on average
and is right t·a_i + (1−t)·a_j of the time, so every point of the segment between two
operating points is achievable, and A is the upper convex (concave) hull of the points, cut at
its most accurate point and flat after it (a larger budget can always be left unspent). Below
the cheapest operating point no mixture reaches the budget: A(c) is undefined there (NaN).

Leaderboard figures per run, then mean ± std (ddof=1) over seeds (:func:`leaderboard`):

- ``accuracy_at_<c>``: A(c) in %, c ∈ {0.25, 0.50, 0.75, 1.00};
- ``auc``: ∫₀¹ A(c) dc in %, A taken as 0 below the cheapest point (a budget the method
  cannot meet scores nothing): the mean accuracy over budgets uniform on [0, 1];
- ``cost_to_backbone_minus_1pt``: min {c : A(c) ≥ backbone accuracy − 1 point}, NaN if never;
- ``ece_at_<c>`` (%) and ``inefficiency95_at_<c>`` (mean set size at the smallest α whose
  coverage is ≥ 95 %), c ∈ {0.50, 0.75}: measured at the **deployed point** of budget c, the
  most accurate single operating point of cost ≤ c (ties: the cheaper). ECE and conformal sets
  are not linear in a mixture, so they are read at a real point, never interpolated.
"""
from __future__ import annotations

import io
import json
import logging
import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from eebench.errors import UsageError
from eebench.records import write_atomic

log = logging.getLogger(__name__)

TABLE_NAME = "operating_points.parquet"
TABLE_VERSION = "1"
#: Budgets (normalised cost) at which the leaderboard reads the accuracy hull.
BUDGETS: tuple[float, ...] = (0.25, 0.50, 0.75, 1.00)
#: Budgets at which the leaderboard reads ECE and conformal inefficiency at the deployed point.
CALIBRATION_BUDGETS: tuple[float, ...] = (0.50, 0.75)
#: "backbone accuracy − 1 point", as a fraction.
BACKBONE_TOLERANCE = 0.01
#: Range of budgets of the area under the hull.
AUC_RANGE: tuple[float, float] = (0.0, 1.0)
#: Canonical order of methods in tables and legends; others follow alphabetically.
METHOD_ORDER: tuple[str, ...] = ("threshold", "boosted", "l2w", "eenet", "diffbranch", "jei")
#: List columns of one entry per exit ([K]).
PER_EXIT_COLUMNS: tuple[str, ...] = ("exit_shares", "exit_accuracy", "im_accuracy", "im_ece")
#: List columns of one entry per requested α ([10]).
CONFORMAL_COLUMNS: tuple[str, ...] = ("conformal_alpha", "conformal_inefficiency", "conformal_coverage")
KEY_COLUMNS: tuple[str, ...] = ("dataset", "backbone", "method", "seed", "run_id", "point")
GROUP_COLUMNS: tuple[str, ...] = ("dataset", "backbone", "method", "variant")
CSV_FLOAT_FORMAT = "%.4f"


# ---------------------------------------------------------------------------------------------
# records → table


def find_records(runs_dir: Path) -> list[Path]:
    """Every ``record.json`` under ``runs_dir`` (recursively), sorted.

    Raises:
        UsageError: the folder does not exist or holds no run record.
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise UsageError(f"{runs_dir} is not a folder of run records nor an operating-point table (.parquet); "
                         f"pass the --out folder of `eebench run` or results/{TABLE_NAME}")
    paths = sorted(runs_dir.rglob("record.json"))
    if not paths:
        raise UsageError(f"no run record (*/record.json) under {runs_dir}; "
                         f"run `eebench run ... --out {runs_dir}` first")
    return paths


def _float(x: Any) -> float:
    return math.nan if x is None else float(x)


def _floats(xs: Iterable[Any] | None, n: int) -> list[float]:
    return [math.nan] * n if xs is None else [_float(x) for x in xs]


def record_rows(record: dict[str, Any], path: Path | str = "record") -> list[dict[str, Any]]:
    """The table rows of one run record: one dict per operating point.

    Records written before ``im_ece`` existed get NaN there.

    Raises:
        UsageError: the file is not a run record (a required field is missing).
    """
    try:
        cfg = record["config"]
        backbone = record["backbone"]
        K = int(backbone["num_exits"])
        run: dict[str, Any] = {
            "dataset": str(cfg["dataset"]), "backbone": str(cfg["backbone"]), "method": str(cfg["method"]),
            "seed": int(cfg["seed"]), "run_id": str(record["run_id"]),
            "backbone_accuracy": float(record["backbone_accuracy"]),
            "backbone_val_accuracy": _float(record.get("backbone_val_accuracy")),
            "backbone_muladds": int(backbone["muladds"]), "num_exits": K,
            "num_classes": int(record.get("num_classes") or 0),
            "n_test": int(record.get("splits", {}).get("test", {}).get("n", 0)),
            "exit_costs": _floats(record.get("exit_costs"), K),
            "git_revision": str(record.get("git_revision") or "unknown"),
            "created": str(record.get("created") or "unknown"), "device": str(record.get("device") or "unknown"),
            **{f"version_{k}": str(v) for k, v in sorted(record.get("versions", {}).items())},
            **{f"p_method_{k}": v for k, v in sorted(cfg.get("method_params", {}).items())},
            **{f"p_dataset_{k}": v for k, v in sorted(cfg.get("dataset_params", {}).items())},
        }
        rows = []
        for i, p in enumerate(record["operating_points"]):
            conf = p.get("conformal") or {}
            n_alpha = len(conf.get("alpha", []))
            rows.append({
                **run, "point": i,
                "setting": json.dumps(p["setting"], sort_keys=True),
                **{f"p_setting_{k}": v for k, v in sorted(p["setting"].items())},
                "accuracy": float(p["accuracy"]), "cost": float(p["cost"]), "muladds": float(p["muladds"]),
                "ece": float(p["ece"]), "ece_mass": _float(p.get("ece_mass")),
                "inefficiency_at_95": _float(p.get("inefficiency_at_95")),
                "val_accuracy": _float(p.get("val", {}).get("accuracy")),
                "val_cost": _float(p.get("val", {}).get("cost")),
                "val_ece": _float(p.get("val", {}).get("ece")),
                **{c: _floats(p.get(c), K) for c in PER_EXIT_COLUMNS},
                "conformal_alpha": _floats(conf.get("alpha"), 0),
                "conformal_inefficiency": _floats(conf.get("inefficiency"), n_alpha),
                "conformal_coverage": _floats(conf.get("coverage"), n_alpha),
            })
    except (KeyError, TypeError, ValueError) as e:
        raise UsageError(f"{path}: not a readable run record ({type(e).__name__}: {e}); "
                         f"remove it or re-run that configuration") from None
    return rows


def _param_column(values: pd.Series) -> pd.Series:
    """One type per parameter column: bool, int, float, str, or else JSON text (lists, dicts, mixed)."""
    present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if present and all(isinstance(v, bool) for v in present):
        return values.astype(object).where(values.notna(), None).astype("boolean")
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return values.astype(object).where(values.notna(), None).astype("Int64")
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return values.astype(float)
    if present and all(isinstance(v, str) for v in present):
        return values.where(values.notna(), None).astype(object)
    return values.map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v))
                      else json.dumps(v, sort_keys=True)).astype(object)


def _order_columns(df: pd.DataFrame) -> pd.DataFrame:
    fixed = [c for c in KEY_COLUMNS if c in df.columns]
    params = sorted(c for c in df.columns if c.startswith("p_"))
    prov = sorted(c for c in df.columns if c.startswith("version_")) + ["git_revision", "created", "device"]
    rest = [c for c in df.columns if c not in fixed and c not in params and c not in prov]
    return df[fixed + rest + params + [c for c in prov if c in df.columns]]


def sort_table(df: pd.DataFrame) -> pd.DataFrame:
    """Rows in a fixed order: dataset, backbone, method (canonical order), seed, run id, point."""
    order = df["method"].map(method_rank)
    out = df.assign(_m=order).sort_values(["dataset", "backbone", "_m", "method", "seed", "run_id", "point"],
                                          kind="stable").drop(columns="_m")
    return out.reset_index(drop=True)


def collect(runs_dir: Path) -> pd.DataFrame:
    """Read every run record under ``runs_dir`` into the long-format table (see module doc).

    Raises:
        UsageError: no record, an unreadable record, or two records of the same run id.
    """
    rows: list[dict[str, Any]] = []
    seen: dict[str, Path] = {}
    for path in find_records(runs_dir):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UsageError(f"{path}: cannot read the run record ({e}); "
                             f"remove it or re-run that configuration") from None
        if not isinstance(record, dict):
            raise UsageError(f"{path}: not a run record (a JSON object is expected)")
        run_id = str(record.get("run_id"))
        if run_id in seen:
            raise UsageError(f"run {run_id} has two records, {seen[run_id]} and {path}; keep one")
        seen[run_id] = path
        new = record_rows(record, path)
        if not new:
            log.warning("%s: no operating point, skipped", path)
        rows.extend(new)
    df = pd.DataFrame(rows)
    for c in df.columns:
        if c.startswith("p_"):
            df[c] = _param_column(df[c])
    return sort_table(_order_columns(df))


def write_table(df: pd.DataFrame, path: Path) -> None:
    """Write the table as zstd-compressed parquet, atomically, tagged with :data:`TABLE_VERSION`.

    Scalars stay float64; the list columns (per exit, per α) are stored as float32 (7 significant
    digits), which keeps a full sweep (6 methods × 3 datasets × 3 seeds × up to 39 points × 9
    exits) well under 1 MiB. Reports and figures always compute from the table as read back.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    for c in (*PER_EXIT_COLUMNS, *CONFORMAL_COLUMNS, "exit_costs"):     # float32 keeps the table small
        table = table.set_column(table.schema.get_field_index(c), c, table[c].cast(pa.list_(pa.float32())))
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"eebench_table": TABLE_VERSION.encode()})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", compression_level=19)
    write_atomic(Path(path), buf.getvalue())


def read_table(path: Path) -> pd.DataFrame:
    """Read a table written by :func:`write_table`.

    Raises:
        UsageError: the file is not a parquet file, or not an eebench operating-point table.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise UsageError(f"{path}: cannot read the operating-point table ({e})") from None
    version = (table.schema.metadata or {}).get(b"eebench_table")
    if version is None:
        raise UsageError(f"{path}: not an eebench operating-point table; build one with `eebench report RUNS_DIR`")
    if version.decode() != TABLE_VERSION:
        raise UsageError(f"{path}: table version {version.decode()}, this eebench reads {TABLE_VERSION}; "
                         f"rebuild it with `eebench report RUNS_DIR`")
    df = table.to_pandas()
    for c in (*PER_EXIT_COLUMNS, *CONFORMAL_COLUMNS, "exit_costs"):
        df[c] = df[c].map(lambda a: np.asarray(a, dtype=float))
    return df


def load(source: Path) -> tuple[pd.DataFrame, bool]:
    """The table from a folder of run records or from a ``.parquet`` table.

    Returns:
        ``(table, from_records)``.

    Raises:
        UsageError: see :func:`collect` and :func:`read_table`.
    """
    source = Path(source)
    if source.is_file():
        return read_table(source), False
    return collect(source), True


# ---------------------------------------------------------------------------------------------
# the budget curve


def method_rank(name: str) -> tuple[int, str]:
    """Sort key of a method (or ``method[variant]``) name: :data:`METHOD_ORDER`, then alphabetical."""
    base = name.split("[", 1)[0]
    return (METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER), name)


def upper_hull(cost: np.ndarray, accuracy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertices of the budget curve A(c) of a set of operating points (see module doc).

    The upper convex hull by Andrew's monotone chain (2-D, O(n log n); scipy's Qhull rejects the
    one-, two- and collinear-point sets a run can produce), kept from the cheapest point up to
    the first most accurate one.

    Args:
        cost: ``[n]`` normalised cost of each operating point.
        accuracy: ``[n]`` its accuracy (any unit).

    Returns:
        ``(hull_cost, hull_accuracy)``, ``[m]`` each, cost strictly increasing, accuracy strictly
        increasing, concave. Empty for no point.
    """
    c = np.asarray(cost, dtype=float)
    a = np.asarray(accuracy, dtype=float)
    ok = np.isfinite(c) & np.isfinite(a)
    pts = sorted(zip(c[ok].tolist(), a[ok].tolist()), key=lambda p: (p[0], -p[1]))
    hull: list[tuple[float, float]] = []
    for x, y in pts:
        if hull and hull[-1][0] == x:       # same cost: the first (most accurate) one stays
            continue
        while len(hull) >= 2:
            (x0, y0), (x1, y1) = hull[-2], hull[-1]
            if (x1 - x0) * (y - y0) - (y1 - y0) * (x - x0) >= 0:   # hull[-1] on or below the chord
                hull.pop()
            else:
                break
        hull.append((x, y))
    if not hull:
        return np.empty(0), np.empty(0)
    hc, ha = np.array(hull).T
    peak = int(np.argmax(ha))
    return hc[:peak + 1], ha[:peak + 1]


def hull_accuracy(hull_cost: np.ndarray, hull_acc: np.ndarray, budget: float | np.ndarray) -> np.ndarray | float:
    """A(c) at ``budget`` (scalar or ``[m]``): linear on the hull, flat after its peak, NaN below
    the cheapest point (or for an empty hull)."""
    b = np.asarray(budget, dtype=float)
    if len(hull_cost) == 0:
        out = np.full(b.shape, np.nan)
    else:
        out = np.interp(b, hull_cost, hull_acc)
        out = np.where(b < hull_cost[0], np.nan, out)
    return float(out) if out.ndim == 0 else out


def hull_auc(hull_cost: np.ndarray, hull_acc: np.ndarray, lo: float = AUC_RANGE[0], hi: float = AUC_RANGE[1]) -> float:
    """(1/(hi−lo))·∫_lo^hi A(c) dc with A = 0 below the cheapest point (exact, A is piecewise linear).

    Returns NaN for an empty hull.
    """
    if len(hull_cost) == 0:
        return math.nan
    start = max(lo, float(hull_cost[0]))
    if start >= hi:
        return 0.0
    xs = np.unique(np.concatenate([[start, hi], hull_cost[(hull_cost > start) & (hull_cost < hi)]]))
    ys = hull_accuracy(hull_cost, hull_acc, xs)
    return float(np.sum((ys[1:] + ys[:-1]) / 2 * np.diff(xs)) / (hi - lo))


def least_cost(hull_cost: np.ndarray, hull_acc: np.ndarray, target: float) -> float:
    """min {c : A(c) ≥ target}: linear on the hull between the vertices around ``target``; NaN if
    the hull never reaches it."""
    if len(hull_acc) == 0 or hull_acc[-1] < target:
        return math.nan
    i = int(np.argmax(hull_acc >= target))
    if i == 0:
        return float(hull_cost[0])
    c0, c1, a0, a1 = hull_cost[i - 1], hull_cost[i], hull_acc[i - 1], hull_acc[i]
    return float(c0 + (target - a0) * (c1 - c0) / (a1 - a0))


def staircase(cost: np.ndarray, accuracy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The deployed point as a function of the budget: the most accurate single operating point of
    cost ≤ c (ties: the cheaper, then the first).

    Returns:
        ``(step_cost, step_index)``, ``[m]`` each: from ``step_cost[j]`` on (until the next step),
        the deployed point is ``step_index[j]`` (an index into the inputs).
    """
    c = np.asarray(cost, dtype=float)
    a = np.asarray(accuracy, dtype=float)
    order = sorted(range(len(c)), key=lambda i: (c[i], -a[i], i))
    steps_c, steps_i, best = [], [], -math.inf
    for i in order:
        if a[i] > best:
            best = a[i]
            steps_c.append(c[i])
            steps_i.append(i)
    return np.asarray(steps_c, dtype=float), np.asarray(steps_i, dtype=int)


def deployed_point(step_cost: np.ndarray, step_index: np.ndarray, budget: float | np.ndarray) -> np.ndarray:
    """Index of the deployed point at each ``budget`` (``[m]`` or scalar), −1 where no point fits."""
    b = np.asarray(budget, dtype=float)
    j = np.searchsorted(step_cost, b, side="right") - 1
    return np.where(j >= 0, step_index[np.clip(j, 0, None)], -1)


# ---------------------------------------------------------------------------------------------
# leaderboard


def _canonical(v: Any) -> str:
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if isinstance(v, np.generic):
        v = v.item()
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return "null"
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True)


def _param_name(column: str) -> str:
    """``p_method_lr`` → ``lr``; ``p_dataset_split_seed`` → ``dataset.split_seed``."""
    if column.startswith("p_method_"):
        return column.removeprefix("p_method_")
    return "dataset." + column.removeprefix("p_dataset_")


def variant_names(df: pd.DataFrame) -> pd.Series:
    """``method`` or ``method[k=v,...]`` per row, naming the method and dataset parameters that
    differ between the runs of the same (dataset, backbone, method) in ``df`` (benchopt style).

    Runs differing only in ``seed`` are seeds of one variant.
    """
    params = [c for c in df.columns if c.startswith(("p_method_", "p_dataset_"))]
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


def _budget_label(b: float) -> str:
    return f"{b:.2f}"


def metric_columns() -> list[str]:
    """Names of the per-run leaderboard figures, in order (units in :func:`run_metrics`)."""
    return (["backbone_accuracy"] + [f"accuracy_at_{_budget_label(b)}" for b in BUDGETS]
            + ["auc", "cost_to_backbone_minus_1pt"] + [f"ece_at_{_budget_label(b)}" for b in CALIBRATION_BUDGETS]
            + [f"inefficiency95_at_{_budget_label(b)}" for b in CALIBRATION_BUDGETS])


def run_metrics(points: pd.DataFrame) -> dict[str, float]:
    """The leaderboard figures of one run (its rows of the table).

    Returns:
        ``backbone_accuracy``, ``accuracy_at_<c>`` and ``auc`` in %;
        ``cost_to_backbone_minus_1pt`` as a normalised cost; ``ece_at_<c>`` in %;
        ``inefficiency95_at_<c>`` as a mean set size (classes). NaN where undefined.
    """
    cost = points["cost"].to_numpy(float)
    acc = points["accuracy"].to_numpy(float)
    bb = float(points["backbone_accuracy"].iloc[0])
    hc, ha = upper_hull(cost, acc)
    out = {"backbone_accuracy": 100 * bb}
    for b in BUDGETS:
        out[f"accuracy_at_{_budget_label(b)}"] = 100 * hull_accuracy(hc, ha, b)
    out["auc"] = 100 * hull_auc(hc, ha)
    out["cost_to_backbone_minus_1pt"] = least_cost(hc, ha, bb - BACKBONE_TOLERANCE)
    sc, si = staircase(cost, acc)
    ece = points["ece"].to_numpy(float)
    ineff = points["inefficiency_at_95"].to_numpy(float)
    for b in CALIBRATION_BUDGETS:
        i = int(deployed_point(sc, si, b))
        out[f"ece_at_{_budget_label(b)}"] = 100 * ece[i] if i >= 0 else math.nan
        out[f"inefficiency95_at_{_budget_label(b)}"] = ineff[i] if i >= 0 else math.nan
    return out


def per_run(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run: group keys, ``seed``, ``run_id`` and :func:`run_metrics`."""
    df = df.assign(variant=variant_names(df))
    rows = []
    for run_id, g in df.groupby("run_id", sort=True):
        first = g.iloc[0]
        rows.append({**{k: first[k] for k in GROUP_COLUMNS}, "seed": int(first["seed"]), "run_id": run_id,
                     "points": len(g), **run_metrics(g.sort_values("point"))})
    out = pd.DataFrame(rows)
    out["_m"] = out["variant"].map(method_rank)
    out = out.sort_values(["dataset", "backbone", "_m", "seed", "run_id"], kind="stable").drop(columns="_m")
    return out.reset_index(drop=True)


def leaderboard(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, backbone, method variant): each figure of :func:`run_metrics` as
    ``<name>_mean`` and ``<name>_std`` over seeds (std with ddof=1, empty for one seed), and
    ``seeds``, the number of runs. A figure undefined in any seed (a budget below a seed's
    cheapest point, an accuracy never reached) is left empty rather than averaged over the others.
    """
    runs = per_run(df)
    rows = []
    for keys, g in runs.groupby(list(GROUP_COLUMNS), sort=False):
        row: dict[str, Any] = dict(zip(GROUP_COLUMNS, keys))
        row["seeds"] = len(g)
        row["points"] = int(g["points"].sum())
        for m in metric_columns():
            v = g[m].to_numpy(float)
            defined = bool(np.isfinite(v).all())
            row[f"{m}_mean"] = float(np.mean(v)) if defined else math.nan
            row[f"{m}_std"] = float(np.std(v, ddof=1)) if defined and len(v) > 1 else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _csv_bytes(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False, float_format=CSV_FLOAT_FORMAT, lineterminator="\n").encode()


def _pm(mean: float, std: float, fmt: str) -> str:
    if not np.isfinite(mean):
        return "–"
    return f"{mean:{fmt}} ± {std:{fmt}}" if np.isfinite(std) else f"{mean:{fmt}}"


def leaderboard_markdown(board: pd.DataFrame) -> str:
    """The leaderboard as Markdown, one table per setting, cells "mean ± std"."""
    cols = [("accuracy_at_0.25", "acc@0.25 %", ".2f"), ("accuracy_at_0.50", "acc@0.50 %", ".2f"),
            ("accuracy_at_0.75", "acc@0.75 %", ".2f"), ("accuracy_at_1.00", "acc@1.00 %", ".2f"),
            ("auc", "AUC %", ".2f"), ("cost_to_backbone_minus_1pt", "cost to bb−1pt", ".3f"),
            ("ece_at_0.50", "ECE@0.50 %", ".2f"), ("ece_at_0.75", "ECE@0.75 %", ".2f"),
            ("inefficiency95_at_0.50", "ineff95@0.50", ".2f"), ("inefficiency95_at_0.75", "ineff95@0.75", ".2f")]
    lines = []
    for (ds, bb), g in board.groupby(["dataset", "backbone"], sort=False):
        acc = _pm(g["backbone_accuracy_mean"].iloc[0], math.nan, ".2f")
        lines += [f"### {ds} / {bb} (backbone accuracy {acc} %)", "",
                  "| method | seeds | " + " | ".join(c[1] for c in cols) + " |",
                  "|---|---:|" + "---:|" * len(cols)]
        for _, r in g.iterrows():
            cells = [_pm(r[f"{c}_mean"], r[f"{c}_std"], f) for c, _, f in cols]
            lines.append(f"| {r['variant']} | {r['seeds']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_report(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Write ``leaderboard.csv``, ``leaderboard_<dataset>.csv`` per dataset and ``leaderboard.md``
    under ``out_dir`` (atomically; floats as ``%.4f``, rows in a fixed order).

    Returns:
        the paths written.
    """
    out_dir = Path(out_dir)
    board = leaderboard(df)
    written = [out_dir / "leaderboard.csv"]
    write_atomic(written[0], _csv_bytes(board))
    for ds, g in board.groupby("dataset", sort=True):
        path = out_dir / f"leaderboard_{ds}.csv"
        write_atomic(path, _csv_bytes(g))
        written.append(path)
    path = out_dir / "leaderboard.md"
    write_atomic(path, leaderboard_markdown(board).encode())
    written.append(path)
    return written
