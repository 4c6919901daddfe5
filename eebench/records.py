"""Run records: atomic writes, provenance (versions, git revision)."""
from __future__ import annotations

import io
import json
import os
import platform
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``:
    readers see the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)   # mkstemp makes 0600; give the file the mode a plain open() would
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=1, default=_json_default) + "\n").encode())


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    write_atomic(path, buf.getvalue())


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def record_path(out_dir: Path, run_id: str) -> Path:
    """``OUT/<run-id>/record.json``: written last and atomically, so it exists only when complete."""
    return Path(out_dir) / run_id / "record.json"


#: ``eebench latency``'s file beside a record (:mod:`eebench.deploy.latency`).
LATENCY_FILE = "latency.json"


def has_record(out_dir: Path, run_id: str, latency: bool = False) -> bool:
    """Whether the run's record exists (then the run is finished and is never run again); with
    ``latency``, whether its ``latency.json`` exists too (a sweep that times its runs)."""
    return record_path(out_dir, run_id).is_file() and (
        not latency or (Path(out_dir) / run_id / LATENCY_FILE).is_file())


def read_record(out_dir: Path, run_id: str) -> dict[str, Any] | None:
    """The run's record, or None when it has none (or an unreadable one)."""
    try:
        record = json.loads(record_path(out_dir, run_id).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and record.get("run_id") == run_id else None


def collect(run_ids: list[str], out_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The complete records of ``run_ids`` under ``out_dir``, and the run ids that have none.

    Only ``record.json`` files are read; they are written last and atomically, so a run in
    progress is never half-read.
    """
    records, missing = [], []
    for run_id in run_ids:
        record = read_record(out_dir, run_id)
        if record is None:
            missing.append(run_id)
        else:
            records.append(record)
    return records, missing


def failure_path(out_dir: Path, key: str) -> Path:
    """``OUT/.failures/<key>.json``: why a run (or a feature stage) of a sweep wrote no record."""
    return Path(out_dir) / ".failures" / f"{key}.json"


def write_failure(out_dir: Path, key: str, error: str) -> None:
    """Record, atomically, the one-line ``error`` a run or stage failed with."""
    write_json(failure_path(out_dir, key), {"key": key, "error": error})


def read_failure(out_dir: Path, key: str) -> str | None:
    """The error of :func:`write_failure`, or None."""
    try:
        return str(json.loads(failure_path(out_dir, key).read_text())["error"])
    except (OSError, ValueError, KeyError):
        return None


def clear_failure(out_dir: Path, key: str) -> None:
    """Forget an earlier failure of ``key`` (before it is attempted again)."""
    failure_path(out_dir, key).unlink(missing_ok=True)


def versions() -> dict[str, str]:
    """Versions of Python, the platform and the packages that decide the numbers."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("eebench", "torch", "timm", "datasets", "numpy", "safetensors", "scikit-learn"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def git_revision() -> str | None:
    """``git describe``-like revision of the eebench source tree (``<sha>`` or ``<sha>-dirty``), or None."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if sha.returncode:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None
