"""Content hashes of cached tensors: written into a safetensors file's metadata when it is saved,
checked when it is loaded, so that a flipped byte in a cache is caught instead of trained on.

xxHash's XXH3-128 over each tensor's bytes: non-cryptographic (it guards against corruption, not
tampering) and fast enough to check every load (about 16 GB/s here).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
import xxhash
from safetensors import safe_open
from safetensors.torch import load_file, save_file

PREFIX = "xxh3_128:"


def digest(tensor: torch.Tensor) -> str:
    """XXH3-128 of a tensor's bytes (C-contiguous, any shape including 0-dim), hex."""
    return xxhash.xxh3_128_hexdigest(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())


def save_hashed(tensors: dict[str, torch.Tensor], path: Path | str, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file`` with each tensor's digest in the metadata, written atomically
    (a temporary file in the same folder, then ``os.replace``; removed if the write fails)."""
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={**(metadata or {}), **{PREFIX + k: digest(v) for k, v in tensors.items()}})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_verified(path: Path | str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a file written by :func:`save_hashed` and check every tensor against its digest.

    Returns:
        ``(tensors, metadata)``.

    Raises:
        ValueError: a tensor has no digest or does not match it (the message names it).
        OSError, SafetensorError: the file cannot be read.
    """
    with safe_open(str(path), "pt") as f:
        metadata = dict(f.metadata() or {})
    tensors = load_file(str(path))
    for name, tensor in tensors.items():
        expected = metadata.get(PREFIX + name)
        if expected is None:
            raise ValueError(f"tensor {name} of {Path(path).name} carries no content hash")
        if digest(tensor) != expected:
            raise ValueError(f"tensor {name} of {Path(path).name} does not match its content hash")
    return tensors, metadata
