"""Content hashes of cached tensors: written into a safetensors file's metadata when it is saved,
checked when it is loaded, so that a flipped byte in a cache is caught instead of trained on.

xxHash's XXH3-128 over each tensor's bytes: non-cryptographic (it guards against corruption, not
tampering) and fast enough to check every load (about 16 GB/s here).
"""
from __future__ import annotations

import json
import os
import struct
import tempfile
from dataclasses import dataclass
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


#: safetensors dtype names (the format's header) → torch dtypes, for the ones the caches hold.
DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "I64": torch.int64,
          "I32": torch.int32, "I16": torch.int16, "U8": torch.uint8}


@dataclass(frozen=True)
class TensorLayout:
    """Where one tensor of a safetensors file lies: ``begin``/``end`` are absolute byte offsets."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


def tensor_layouts(path: Path | str) -> tuple[dict[str, TensorLayout], dict[str, str]]:
    """The byte layout of every tensor of a safetensors file, from its header (the format: an
    8-byte little-endian header length, the JSON header, then the data), without reading the data.

    Returns:
        ``({name: TensorLayout}, metadata)``.

    Raises:
        OSError: the file cannot be read. ValueError: the header is malformed or names a dtype
        outside :data:`DTYPES`.
    """
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > 100_000_000:
            raise ValueError(f"{Path(path).name}: a {length}-byte header is not a safetensors header")
        header = json.loads(f.read(length))
    metadata = header.pop("__metadata__", None) or {}
    start = 8 + length
    try:
        layouts = {k: TensorLayout(DTYPES[v["dtype"]], tuple(v["shape"]), start + v["data_offsets"][0],
                                   start + v["data_offsets"][1]) for k, v in header.items()}
    except KeyError as e:
        raise ValueError(f"{Path(path).name}: unsupported or malformed tensor entry ({e})") from e
    return layouts, metadata


def verify_file(path: Path | str, chunk_bytes: int = 1 << 26) -> tuple[dict[str, TensorLayout], dict[str, str]]:
    """Check every tensor of a file written by :func:`save_hashed` against its digest, reading it in
    chunks of ``chunk_bytes`` (memory does not grow with the file): the check of
    :func:`load_verified` for files read later row by row.

    Returns:
        ``({name: TensorLayout}, metadata)``.

    Raises:
        ValueError: a tensor has no digest, is truncated or does not match its digest (named).
        OSError: the file cannot be read.
    """
    layouts, metadata = tensor_layouts(path)
    buf = bytearray(chunk_bytes)
    with open(path, "rb", buffering=0) as f:
        for name, t in layouts.items():
            expected = metadata.get(PREFIX + name)
            if expected is None:
                raise ValueError(f"tensor {name} of {Path(path).name} carries no content hash")
            h, pos = xxhash.xxh3_128(), t.begin
            while pos < t.end:
                view = memoryview(buf)[:min(chunk_bytes, t.end - pos)]
                got = os.preadv(f.fileno(), [view], pos)
                if got == 0:
                    raise ValueError(f"tensor {name} of {Path(path).name} is truncated")
                h.update(view[:got])
                pos += got
            if h.hexdigest() != expected:
                raise ValueError(f"tensor {name} of {Path(path).name} does not match its content hash")
    return layouts, metadata
