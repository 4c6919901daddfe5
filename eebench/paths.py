"""Where the harness keeps its caches and finds local mirrors.

Environment variables (each overridden by the matching CLI option):

- ``EEBENCH_CACHE_DIR``: feature caches, trained backbones, derived datasets
  (default ``~/.cache/eebench``).
- ``EEBENCH_DATA_DIR``: a local mirror of hub datasets laid out as ``DIR/<name>/{train,test}.parquet``.
- ``EEBENCH_WEIGHTS_DIR``: a folder holding published checkpoint files under their file names.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from eebench.errors import UsageError


def writable_dir(path: str | os.PathLike, what: str, create: bool = False) -> Path:
    """Check that this process can write into folder ``path`` (or create it: its nearest existing
    ancestor must be a writable folder), creating it only with ``create``.

    Raises:
        UsageError: it (or an ancestor) is a file, or it cannot be written (a read-only mount, no
            permission), naming ``what`` (e.g. "--out") and what to do.
    """
    path = Path(path).expanduser()
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"{what} {path}: {probe} is a file, not a folder; pass a folder")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
        if create:
            path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{what} {path} is not writable ({e.strerror or type(e).__name__}): pass a folder you can "
                         f"write to") from None
    return path


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The cache root: ``override``, else ``$EEBENCH_CACHE_DIR``, else ``~/.cache/eebench``.

    Raises:
        UsageError: it is a file or not writable.
    """
    root = override or os.environ.get("EEBENCH_CACHE_DIR") or Path.home() / ".cache" / "eebench"
    return writable_dir(root, "the cache folder (--cache-dir / EEBENCH_CACHE_DIR)", create=True)


def data_dir(override: str | os.PathLike | None = None) -> Path | None:
    """The local dataset mirror: ``override``, else ``$EEBENCH_DATA_DIR``, else None (use the hub)."""
    root = override or os.environ.get("EEBENCH_DATA_DIR")
    return Path(root).expanduser() if root else None


def weights_dir(override: str | os.PathLike | None = None) -> Path | None:
    """The local checkpoint folder: ``override``, else ``$EEBENCH_WEIGHTS_DIR``, else None (use URLs)."""
    root = override or os.environ.get("EEBENCH_WEIGHTS_DIR")
    return Path(root).expanduser() if root else None


def slug(name: str) -> str:
    """``name`` as one file-name component: runs of characters other than letters, digits, ``.``,
    ``_`` and ``-`` become ``_`` (``hf:ylecun/mnist`` → ``hf_ylecun_mnist``); registered names are
    unchanged."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")
