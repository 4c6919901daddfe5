"""Run records → the long-format tables every report and figure reads.

``operating_points.parquet`` has one row per operating point of every run: the keys
(``dataset``, ``backbone``, ``method``, ``seed``, ``run_id``, ``point``), the point's setting
(``setting`` as JSON and one ``p_setting_<knob>`` column per knob), its metrics on ``test``
(``accuracy``, ``cost``, ``muladds``, ``ece``, ``ece_mass``, ``inefficiency_at_95``) and on the
selection split (``val_accuracy``, ``val_cost``, ``val_ece``), failure prediction (``auroc``,
``aurc``, ``e_aurc``), the per-exit arrays as list columns (``exit_shares``, ``exit_accuracy``,
``im_accuracy``, ``im_ece``, ``im_auroc``, ``im_aurc``, ``conformal_alpha``,
``conformal_inefficiency``, ``conformal_coverage``), the run's parameters (``p_method_<param>``,
``p_dataset_<param>``, ``p_im_<param>``, in the manner of benchopt), the backbone's figures and
identity (``backbone_accuracy``, ``backbone_muladds``, ``num_exits``, ``exit_costs``,
``weights_sha256``, ``weights_source``, ...), the test split's identity (``n_test``,
``test_sha256``) and provenance (``git_revision``, ``created``, ``device``, ``version_<package>``).

``samples_<dataset>_<backbone>.parquet``, beside it (one file per setting, so that each stays small),
holds the per-sample arrays of the test samples that the uncertainty of the leaderboard
(:mod:`eebench.report.bootstrap`) and the diagnostics (:mod:`eebench.report.diagnostics`) need, for
the points the leaderboard deploys only: one row per (``run_id``, ``point``) with the samples'
``exit`` (0-based), ``correct``, ``confidence`` (240 levels aligned with the ECE bins,
:func:`quantise_confidence`), conformal ``set_size`` at α = 0.05 and ``exit_set``, the set of exit
answers the point answers with; one row per run with ``point`` = −1 and ``auc_score``, each sample's
correctness weighted by the share of budgets at which each point is deployed (255 levels); and one
row per set of exit answers a deployed point uses, ``point`` = −2 − s for set s, with
``exit_correct``, one integer per sample whose bit k says whether exit k answers it correctly, the
test ``labels``
(:func:`correct_bits`), and, for the runs of the shared IM stage (:data:`STAGE_METHOD`: the
threshold baseline trains nothing on top of it), ``exit_confidence``, every exit's confidence
(``[K·N]``, exit-major, 240 levels). They serve the standard errors and the oracle, overthinking and
per-exit figures; every other mean is computed from the exact figures of the operating-point table.

Both tables are written atomically as zstd-compressed parquet, tagged with :data:`TABLE_VERSION`;
reports and figures compute from the tables as read back, so a report from run records and one
from the committed tables cannot differ.
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
from eebench.records import LATENCY_FILE, write_atomic

log = logging.getLogger(__name__)

TABLE_NAME = "operating_points.parquet"
#: The samples tables, one per setting: ``samples_<dataset>_<backbone>.parquet``.
SAMPLES_GLOB = "samples_*.parquet"
TABLE_VERSION = "3"
#: Canonical order of methods in tables and legends; others follow alphabetically.
METHOD_ORDER: tuple[str, ...] = ("threshold", "boosted", "l2w", "eenet", "diffbranch", "jei")
#: List columns of one entry per exit ([K]).
PER_EXIT_COLUMNS: tuple[str, ...] = ("exit_shares", "exit_accuracy", "im_accuracy", "im_ece", "im_auroc", "im_aurc")
#: List columns of one entry per requested α ([10]).
CONFORMAL_COLUMNS: tuple[str, ...] = ("conformal_alpha", "conformal_inefficiency", "conformal_coverage")
KEY_COLUMNS: tuple[str, ...] = ("dataset", "backbone", "method", "seed", "run_id", "point")
#: Columns a run's ``latency.json`` adds to its timed points (absent where no run has one).
LATENCY_COLUMNS: tuple[str, ...] = ("measured_speedup", "measured_s_per_sample", "latency_batch_size",
                                    "latency_device")
#: Levels of the confidences in ``samples.parquet``: a multiple of the 15 ECE bins, so that every
#: stored level falls in the same bin as the confidence it stands for (:func:`quantise_confidence`).
CONFIDENCE_LEVELS = 240
#: Levels of the AUC scores in ``samples.parquet``.
SCORE_LEVELS = 255


def quantise_confidence(confidence: np.ndarray) -> np.ndarray:
    """``ceil(conf · 240)`` as uint8: the ECE bin ((m−1)/15, m/15] of a confidence is exactly that of
    :func:`dequantise_confidence` of its level; the value itself is kept to 1/480."""
    return np.clip(np.ceil(np.asarray(confidence, np.float64) * CONFIDENCE_LEVELS), 0, CONFIDENCE_LEVELS).astype(np.uint8)


def dequantise_confidence(levels: np.ndarray) -> np.ndarray:
    """The middle of each level's interval ((q − 1)/240, q/240] (0 for level 0)."""
    q = np.asarray(levels, np.float64)
    return np.clip(q - 0.5, 0.0, None) / CONFIDENCE_LEVELS


#: The method whose exits are the shared IM stage's, unchanged.
STAGE_METHOD = "threshold"
#: Most exits a bitmask of correct exits holds (int64, sign bit left alone).
MAX_EXITS = 62


def correct_bits(exit_correct: np.ndarray) -> np.ndarray:
    """Per sample, the exits that answer correctly as one integer: bit k set ⇔ exit k (0-based).

    Args:
        exit_correct: ``[K, N]`` bool.

    Returns:
        ``[N]`` int64.

    Raises:
        ValueError: K > :data:`MAX_EXITS`.
    """
    ok = np.asarray(exit_correct, dtype=bool)
    if ok.shape[0] > MAX_EXITS:
        raise ValueError(f"{ok.shape[0]} exits: at most {MAX_EXITS} fit the per-sample bitmask")
    return (ok.astype(np.int64) << np.arange(ok.shape[0], dtype=np.int64)[:, None]).sum(0)


def exit_correct(bits: np.ndarray, num_exits: int) -> np.ndarray:
    """The inverse of :func:`correct_bits`: ``[K, N]`` bool."""
    b = np.asarray(bits, dtype=np.int64)
    return ((b[None, :] >> np.arange(num_exits, dtype=np.int64)[:, None]) & 1).astype(bool)


def first_correct(bits: np.ndarray, num_exits: int) -> np.ndarray:
    """``[N]`` the first exit (0-based) that answers each sample correctly; −1 where none does."""
    ok = exit_correct(bits, num_exits)
    return np.where(ok.any(0), ok.argmax(0), -1)


def method_rank(name: str) -> tuple[int, str]:
    """Sort key of a method (or ``method[variant]``) name: :data:`METHOD_ORDER`, then alphabetical."""
    base = name.split("[", 1)[0]
    return (METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER), name)


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


def _source(source: str) -> str:
    """A weights source without this machine's cache path: "trained here" (+ " (partial schedule)")
    (+ "; <recipe>" where the record names the recipe)."""
    if source.startswith("trained here"):
        recipe = source.split("; recipe ", 1)[1] if "; recipe " in source else ""
        return ("trained here" + (" (partial schedule)" if "partial schedule" in source else "")
                + (f"; recipe {recipe}" if recipe else ""))
    return source


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
            "test_sha256": str(record.get("splits", {}).get("test", {}).get("indices_sha256", "unknown")),
            "weights_sha256": str(backbone.get("weights", {}).get("sha256", "unknown")),
            "weights_source": _source(str(backbone.get("weights", {}).get("source", "unknown"))),
            "ims_start": str((record.get("ims") or {}).get("start", "unknown")),
            "exit_costs": _floats(record.get("exit_costs"), K),
            "train_class_counts": _floats(record.get("train_class_counts"), int(record.get("num_classes") or 0)),
            "git_revision": str(record.get("git_revision") or "unknown"),
            "created": str(record.get("created") or "unknown"), "device": str(record.get("device") or "unknown"),
            "run_seconds": _float((record.get("timings") or {}).get("total")),
            **{f"version_{k}": str(v) for k, v in sorted(record.get("versions", {}).items())},
            **{f"p_method_{k}": v for k, v in sorted(cfg.get("method_params", {}).items())},
            **{f"p_dataset_{k}": v for k, v in sorted(cfg.get("dataset_params", {}).items())},
            **{f"p_im_{k}": v for k, v in sorted(cfg.get("im_params", {}).items())},
            **{f"p_recipe_{k}": v for k, v in sorted(cfg.get("recipe", {}).items())},
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
                "auroc": _float(p.get("auroc")), "aurc": _float(p.get("aurc")), "e_aurc": _float(p.get("e_aurc")),
                **{c: _floats(p.get(c), K) for c in PER_EXIT_COLUMNS},
                "conformal_alpha": _floats(conf.get("alpha"), 0),
                "conformal_inefficiency": _floats(conf.get("inefficiency"), n_alpha),
                "conformal_coverage": _floats(conf.get("coverage"), n_alpha),
            })
    except (KeyError, TypeError, ValueError) as e:
        raise UsageError(f"{path}: not a readable run record ({type(e).__name__}: {e}); "
                         f"remove it or re-run that configuration") from None
    return rows


def add_latency(rows: list[dict[str, Any]], path: Path) -> list[dict[str, Any]]:
    """``rows`` (one run's, :func:`record_rows`) with :data:`LATENCY_COLUMNS` on the points its
    ``latency.json`` at ``path`` timed (matched by setting); unchanged where there is no such file.

    Raises:
        UsageError: the file cannot be read.
    """
    if not path.exists():
        return rows
    try:
        result = json.loads(path.read_text())
        timed = {json.dumps(p["setting"], sort_keys=True): p for p in result["points"]}
        extra = {"latency_batch_size": int(result["batch_size"]), "latency_device": str(result["device"])}
        n = int(result["samples"])
        for row in rows:
            p = timed.get(row["setting"])
            if p is not None:
                row.update(measured_speedup=float(p["measured_speedup"]),
                           measured_s_per_sample=float(p["seconds"]) / n, **extra)
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise UsageError(f"{path}: cannot read it ({type(e).__name__}: {e}); run `eebench latency` again or "
                         f"remove it") from None
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


def collect(runs_dir: Path) -> tuple[pd.DataFrame, dict[str, Path]]:
    """Read every run record under ``runs_dir`` into the long-format table (see module doc).

    Returns:
        ``(table, folders)``: the table and each run id's folder (where its ``samples.npz`` is).

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
        new = add_latency(record_rows(record, path), path.parent / LATENCY_FILE)
        if not new:
            log.warning("%s: no operating point, skipped", path)
        rows.extend(new)
    df = pd.DataFrame(rows)
    for c in df.columns:
        if c.startswith("p_"):
            df[c] = _param_column(df[c])
    return sort_table(_order_columns(df)), {run_id: path.parent for run_id, path in seen.items()}


def write_table(df: pd.DataFrame, path: Path) -> None:
    """Write the table as zstd-compressed parquet, atomically, tagged with :data:`TABLE_VERSION`.

    Scalars stay float64; the list columns (per exit, per α) are stored as float32 (7 significant
    digits), which keeps a full sweep (6 methods × 3 datasets × 3 seeds × up to 39 points × 9
    exits) well under 1 MiB. Reports and figures always compute from the table as read back.
    """
    import pyarrow as pa

    table = pa.Table.from_pandas(df, preserve_index=False)
    for c in (*PER_EXIT_COLUMNS, *CONFORMAL_COLUMNS, "exit_costs", "train_class_counts"):   # float32: small
        table = table.set_column(table.schema.get_field_index(c), c, table[c].cast(pa.list_(pa.float32())))
    _write_parquet(table, path)


def read_table(path: Path) -> pd.DataFrame:
    """Read a table written by :func:`write_table`.

    Raises:
        UsageError: the file is not a parquet file, or not an eebench operating-point table.
    """
    df = _read_parquet(path, "operating-point")
    for c in (*PER_EXIT_COLUMNS, *CONFORMAL_COLUMNS, "exit_costs", "train_class_counts"):
        df[c] = df[c].map(lambda a: np.asarray(a, dtype=float))
    return df


def samples_name(dataset: str, backbone: str) -> str:
    """The file name of a setting's samples table."""
    from eebench.paths import slug

    return f"samples_{slug(dataset)}_{slug(backbone)}.parquet"


#: Arrays a run's ``samples.npz`` must hold for the samples table.
SAMPLE_ARRAYS = ("labels", "exit_index", "prediction", "confidence", "set_size", "exit_prediction",
                 "exit_confidence", "exit_set")
SAMPLE_COLUMNS = ("run_id", "point", "exit", "correct", "set_size", "confidence", "auc_score", "exit_set",
                  "exit_correct", "exit_confidence", "labels")


def _run_arrays(folders: dict[str, Path], run_ids: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """Each run's ``samples.npz`` arrays.

    Raises:
        UsageError: runs whose file is missing, unreadable or lacks an array (written before this
            version), all named in one line with how to regenerate them.
    """
    out, lacking = {}, []
    for run_id in run_ids:
        try:
            with np.load(folders[run_id] / "samples.npz") as z:
                out[run_id] = {k: z[k] for k in SAMPLE_ARRAYS}
        except (OSError, KeyError, ValueError):
            lacking.append(run_id)
    if lacking:
        more = f" and {len(lacking) - 3} more" if len(lacking) > 3 else ""
        raise UsageError(f"{len(lacking)} run(s) lack the per-sample arrays of this version (every exit's answers): "
                         f"{', '.join(lacking[:3])}{more} (in {folders[lacking[0]].parent}); regenerate them: remove "
                         f"those run folders and run their sweep again (eebench sweep GRID --out ...), which re-runs "
                         f"only the runs without a record")
    return out


def sample_payloads(folders: dict[str, Path], plan: dict[str, dict[str, Any]], table: pd.DataFrame) -> pd.DataFrame:
    """The samples table for the points a report deploys (see module doc).

    Args:
        folders: run id → its folder (``samples.npz`` inside), from :func:`collect`.
        plan: run id → ``{"points": [point indices], "auc": {point: share of budgets}}``.
        table: the operating-point table (each run's method).

    Raises:
        UsageError: see :func:`_run_arrays`.
    """
    method = table.drop_duplicates("run_id").set_index("run_id")["method"]
    arrays_of = _run_arrays(folders, sorted(plan))
    rows = []
    for run_id in sorted(plan):
        arrays = arrays_of[run_id]
        correct = arrays["prediction"] == arrays["labels"][None, :]
        points = sorted(set(plan[run_id]["points"]))
        for p in points:
            rows.append({"run_id": run_id, "point": int(p), "exit": arrays["exit_index"][p].astype(np.int8),
                         "correct": correct[p], "set_size": arrays["set_size"][p].astype(np.int16),
                         "confidence": quantise_confidence(arrays["confidence"][p]),
                         "exit_set": int(arrays["exit_set"][p])})
        auc = plan[run_id].get("auc") or {}
        if auc:
            score = sum(w * correct[p] for p, w in auc.items())
            rows.append({"run_id": run_id, "point": -1, "auc_score": np.rint(score * SCORE_LEVELS).astype(np.uint8)})
        for e in sorted({int(arrays["exit_set"][p]) for p in points}):
            ok = arrays["exit_prediction"][e] == arrays["labels"][None, :]            # [K, N]
            conf = quantise_confidence(arrays["exit_confidence"][e]).reshape(-1) if method[run_id] == STAGE_METHOD \
                else None
            rows.append({"run_id": run_id, "point": -2 - e, "exit_set": e, "exit_correct": correct_bits(ok),
                         "exit_confidence": conf, "labels": arrays["labels"].astype(np.int16)})
    return pd.DataFrame(rows, columns=list(SAMPLE_COLUMNS)).astype({"point": int, "exit_set": "Int64"})


def _write_parquet(table: Any, path: Path) -> None:
    import pyarrow.parquet as pq

    table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"eebench_table": TABLE_VERSION.encode()})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", compression_level=19)
    write_atomic(Path(path), buf.getvalue())


def write_samples(df: pd.DataFrame, table: pd.DataFrame, folder: Path) -> list[Path]:
    """Write the samples table as one file per setting (:func:`samples_name`) under ``folder``,
    atomically (lists as int8 / bool / int16 / uint8 / int64), and remove the samples files of
    settings that are no longer in ``table``.

    Returns:
        the paths written.
    """
    import pyarrow as pa

    schema = pa.schema([("run_id", pa.string()), ("point", pa.int32()), ("exit", pa.list_(pa.int8())),
                        ("correct", pa.list_(pa.bool_())), ("set_size", pa.list_(pa.int16())),
                        ("confidence", pa.list_(pa.uint8())), ("auc_score", pa.list_(pa.uint8())),
                        ("exit_set", pa.int16()), ("exit_correct", pa.list_(pa.int64())),
                        ("exit_confidence", pa.list_(pa.uint8())), ("labels", pa.list_(pa.int16()))])
    folder = Path(folder)
    runs = table.drop_duplicates("run_id").set_index("run_id")[["dataset", "backbone"]]
    setting = df["run_id"].map(lambda r: samples_name(*runs.loc[r])) if len(df) else pd.Series([], dtype=object)
    written = []
    for name in sorted({samples_name(d, b) for d, b in runs.itertuples(index=False)}):
        part = df[setting == name]
        cols = {c: [_plain(v) for v in part[c]] for c in schema.names}
        _write_parquet(pa.Table.from_pydict(cols, schema=schema), folder / name)
        written.append(folder / name)
    for stale in set(folder.glob(SAMPLES_GLOB)) - set(written):
        stale.unlink()
    return written


def _plain(v: Any) -> Any:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v.item() if isinstance(v, np.generic) else v


def read_samples(folder: Path) -> pd.DataFrame | None:
    """Read the samples tables of a folder (every ``samples_*.parquet``, one per setting); None (with
    a warning) when there is none.

    Raises:
        UsageError: a file that is not an eebench samples table of this version.
    """
    paths = sorted(Path(folder).glob(SAMPLES_GLOB))
    if not paths:
        log.warning("no %s in %s: the leaderboard's standard errors, ties and diagnostics are left empty",
                    SAMPLES_GLOB, folder)
        return None
    df = pd.concat([_read_parquet(p, "samples") for p in paths], ignore_index=True)
    for c in ("exit", "correct", "set_size", "confidence", "auc_score", "exit_correct", "exit_confidence", "labels"):
        df[c] = df[c].map(lambda a: None if a is None else np.asarray(a))
    return df


def _read_parquet(path: Path, what: str) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise UsageError(f"{path}: cannot read the {what} table ({e})") from None
    version = (table.schema.metadata or {}).get(b"eebench_table")
    if version is None:
        raise UsageError(f"{path}: not an eebench {what} table; build one with `eebench report RUNS_DIR`")
    if version.decode() != TABLE_VERSION:
        raise UsageError(f"{path}: table version {version.decode()}, this eebench reads {TABLE_VERSION}; "
                         f"rebuild it with `eebench report RUNS_DIR`")
    return table.to_pandas()
