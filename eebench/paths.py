"""Where the harness keeps its caches and finds local mirrors.

Environment variables (each overridden by the matching CLI option):

- ``EEBENCH_CACHE_DIR``: feature caches, trained backbones, derived datasets
  (default ``~/.cache/eebench``).
- ``EEBENCH_DATA_DIR``: a local mirror of hub datasets laid out as ``DIR/<name>/{train,test}.parquet``.
- ``EEBENCH_WEIGHTS_DIR``: a folder holding published checkpoint files under their file names.
"""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The cache root: ``override``, else ``$EEBENCH_CACHE_DIR``, else ``~/.cache/eebench``."""
    root = override or os.environ.get("EEBENCH_CACHE_DIR") or Path.home() / ".cache" / "eebench"
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir(override: str | os.PathLike | None = None) -> Path | None:
    """The local dataset mirror: ``override``, else ``$EEBENCH_DATA_DIR``, else None (use the hub)."""
    root = override or os.environ.get("EEBENCH_DATA_DIR")
    return Path(root).expanduser() if root else None


def weights_dir(override: str | os.PathLike | None = None) -> Path | None:
    """The local checkpoint folder: ``override``, else ``$EEBENCH_WEIGHTS_DIR``, else None (use URLs)."""
    root = override or os.environ.get("EEBENCH_WEIGHTS_DIR")
    return Path(root).expanduser() if root else None
