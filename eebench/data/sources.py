"""Where a dataset's rows come from, in the Hugging Face hub's schema, from one of three sources:

1. the hub, by id, through :func:`datasets.load_dataset` (the default for users);
2. a local mirror ``DIR/<name>/{train,test}.parquet`` in the hub's schema, given by ``--data-dir``
   or ``$EEBENCH_DATA_DIR`` (``../shared/data`` is one), loaded with the ``parquet`` builder;
3. a dataset bundled with a dependency (scikit-learn's ``digits``, the offline default) or derived
   from another (a long tail, superpixel graphs): the spec's ``builder``.

Each comes with a content fingerprint (the mirror's bytes, the hub cache's fingerprints, the
bundled data's bytes) that every cache key downstream includes.
"""
from __future__ import annotations

import hashlib
import inspect
import logging
import os
from pathlib import Path
from typing import Any

import datasets

from eebench.data.spec import DatasetSpec
from eebench.errors import DataUnavailableError

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# sources
def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, hex."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` forbids the hub."""
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")


def hub_error(spec: DatasetSpec, e: Exception, layout: str, hint: str = "") -> DataUnavailableError:
    """The one-line error of a dataset the hub cannot serve, saying how to give a local mirror."""
    why = "HF_HUB_OFFLINE is set" if offline() else f"the hub did not serve it ({type(e).__name__})"
    return DataUnavailableError(
        f"cannot load '{spec.name}' from the Hugging Face hub ({spec.hub_id}): {why}; pass --data-dir DIR "
        f"with {layout} in the hub's schema" + (", or unset HF_HUB_OFFLINE to download it" if offline() else hint))


def dict_fingerprint(ds: datasets.DatasetDict) -> str:
    """A content key of a hub-loaded DatasetDict (the hub cache's fingerprints of its splits)."""
    return hashlib.sha256("".join(f"{s}:{d._fingerprint}" for s, d in sorted(ds.items())).encode()).hexdigest()[:16]


def load_mirror(spec: DatasetSpec, root: Path | None, folder: Path | None = None,
                splits: tuple[str, ...] = ("train", "test")) -> tuple[datasets.DatasetDict, str]:
    """``root/<name>/{train,test}.parquet`` (or ``folder/<split>.parquet`` for each of ``splits``) in
    the hub's schema, and a fingerprint of the files' bytes.

    Raises:
        DataUnavailableError: no ``train.parquet``, or an unreadable file.
    """
    folder = Path(folder) if folder is not None else Path(root) / spec.name
    files = {s: folder / f"{s}.parquet" for s in splits}
    files = {s: p for s, p in files.items() if p.exists()}
    if "train" not in files:
        what = f"({spec.hub_id})" if spec.hub_id else "in the hub's schema"
        raise DataUnavailableError(
            f"no local mirror of '{spec.name}' at {folder}/train.parquet: put the hub's parquet files there "
            f"{what}, or drop --data-dir / EEBENCH_DATA_DIR to load from the hub")
    try:
        ds = datasets.load_dataset("parquet", data_files={s: str(p) for s, p in files.items()})
    except Exception as e:  # a truncated or foreign file
        raise DataUnavailableError(f"cannot read the mirror of '{spec.name}' in {folder}: {type(e).__name__}: "
                                   f"{str(e).splitlines()[0] if str(e) else ''}; replace the parquet files") from e
    fingerprint = hashlib.sha256("".join(f"{s}:{file_sha256(p)}" for s, p in sorted(files.items())).encode())
    return ds, fingerprint.hexdigest()[:16]


def _load_hub(spec: DatasetSpec) -> tuple[datasets.DatasetDict, str]:
    try:
        ds = datasets.load_dataset(spec.hub_id, spec.hub_config)
    except (ConnectionError, OSError, datasets.exceptions.DatasetNotFoundError) as e:
        raise hub_error(spec, e, f"DIR/{spec.name}/{{train,test}}.parquet") from e
    return ds, dict_fingerprint(ds)


def load_source(spec: DatasetSpec, data_dir: Path | None = None, cache_dir: Path | None = None,
                params: dict[str, Any] | None = None) -> tuple[datasets.DatasetDict, str]:
    """Load a dataset's source splits (``train`` and, where it has one, ``test``) in the hub schema.

    Returns:
        ``(dataset_dict, fingerprint)``; the fingerprint is a content hash (mirror file bytes,
        the hub's cache fingerprint, or the bundled data's bytes) used in cache keys.

    Raises:
        DataUnavailableError: the mirror lacks the files, or the hub cannot serve the dataset.
    """
    if spec.builder is not None:
        if "params" in inspect.signature(spec.builder).parameters:  # a builder with dataset parameters
            return spec.builder(data_dir=data_dir, cache_dir=cache_dir, params={**spec.default_parameters(), **(params or {})})
        return spec.builder(data_dir=data_dir, cache_dir=cache_dir)
    if data_dir is not None:
        return load_mirror(spec, data_dir)
    return _load_hub(spec)


