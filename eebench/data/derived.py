"""Datasets derived from another one (a long-tailed cut, superpixel graphs), built once and cached.

An entry lives under ``<cache>/derived/<name>-<key>/`` (:meth:`datasets.DatasetDict.save_to_disk`),
``key`` hashing everything the build depends on (the source's content fingerprint and every
parameter), so a change of either builds a new entry. It is built under a file lock into a
temporary folder and renamed into place: a killed build leaves nothing that looks complete.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import datasets
from filelock import FileLock

from eebench import paths
from eebench.errors import CorruptCacheError

log = logging.getLogger(__name__)


def derived_dataset(name: str, key_parts: dict[str, Any], build: Callable[[], datasets.DatasetDict],
                    cache_dir: Path | None = None) -> tuple[datasets.DatasetDict, str]:
    """The cached derived dataset ``name`` for ``key_parts``, built with ``build()`` the first time.

    Returns:
        ``(dataset_dict, key)``; the key (16 hex digits of the sha256 of ``key_parts``) is the
        dataset's content fingerprint for the caches downstream.

    Raises:
        CorruptCacheError: the cached entry cannot be read (the message says what to delete).
    """
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
    root = paths.cache_dir(cache_dir) / "derived"
    root.mkdir(parents=True, exist_ok=True)
    folder = root / f"{name}-{key}"
    with FileLock(str(root / f".{name}-{key}.lock")):
        if not (folder / "dataset_dict.json").exists():
            log.info("%s: building %s", name, folder)
            tmp = Path(tempfile.mkdtemp(prefix=f".{name}-{key}.", dir=root))
            try:
                build().save_to_disk(str(tmp / "data"))
                os.rename(tmp / "data", folder)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            log.info("%s: built and cached", name)
        try:
            return datasets.load_from_disk(str(folder)), key
        except Exception as e:
            raise CorruptCacheError(f"derived dataset {folder} is unreadable ({type(e).__name__}); delete it "
                                    f"(rm -rf {folder}) and run again to rebuild it") from e
