"""The feature cache: the frozen backbone runs once per (weights, dataset, splits, preprocessing).

For each split it stores the inputs of the K−1 IMs (one ``[N, D_k]`` float16 tensor per exit),
the backbone's own logits (exit K, ``[N, C]``) and the labels, in safetensors shards of
:data:`SHARD_ROWS` rows (whole batches) under ``<cache>/features/<key>/`` (``train-00000.safetensors``,
...). The key is a content hash of the backbone weights, the data (source fingerprint and split
indices), the preprocessing and the exit design, so a stale cache cannot be read. The pass writes
each shard as soon as its rows are done (atomically, never a whole split in memory) into
``.<key>.partial/``; a pass that is interrupted resumes after its last complete shard, and the
folder is renamed into place with its ``meta.json`` once every split is done, so nothing that looks
complete is ever half-written. Every tensor carries a content hash, checked on each load
(:mod:`eebench.integrity`), so a corrupted shard is reported, by name, not trained on.

A shard holds three tensors: ``im_inputs`` ``[rows, ΣD_k]`` float16 (the K−1 IM inputs side by side,
their widths in the metadata), ``logits`` ``[rows, C]`` float32 and ``labels`` ``[rows]`` int64.
A split larger than :data:`IN_MEMORY_BYTES` is not loaded: its rows are read from the shards as a
method asks for them (:class:`ShardedRows`), so a fit's memory does not grow with the split.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from filelock import FileLock
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from eebench.errors import CorruptCacheError
from eebench.integrity import TensorLayout, load_verified, save_hashed, tensor_layouts, verify_file

log = logging.getLogger(__name__)

#: 2: every tensor carries a content hash (eebench.integrity); 3: splits in shards; 4: one IM input tensor per shard
FEATURES_VERSION = 4
#: Rows per shard (rounded down to whole batches of the pass): 41 MB of T2T-ViT-14 IM inputs.
SHARD_ROWS = 4096
#: A split whose IM inputs and logits take more bytes than this stays on disk, read by rows on demand
#: (:class:`ShardedRows`); smaller ones are loaded into memory. The two give the same tensors.
IN_MEMORY_BYTES = 2 << 30


class ShardedRows:
    """A tensor ``[N, ...]`` stored across safetensors shards (its rows one shard after another),
    read from disk on demand: ``rows[idx]`` reads rows ``idx`` only, one ``preadv`` per run of
    consecutive rows, so memory holds the rows asked for and nothing else (``docs/decisions.md``,
    "Feature caches larger than memory").

    Args:
        paths: the shard files, in row order.
        layouts: where the tensor lies in each shard (:func:`eebench.integrity.verify_file`).

    Raises:
        ValueError: the shards disagree on the dtype or the row shape.
    """

    def __init__(self, paths: list[Path], layouts: list[TensorLayout]):
        self.paths, self.layouts = [Path(p) for p in paths], list(layouts)
        shapes = {tuple(t.shape[1:]) for t in self.layouts}
        dtypes = {t.dtype for t in self.layouts}
        if len(shapes) != 1 or len(dtypes) != 1:
            raise ValueError(f"shards disagree on the row shape {sorted(shapes)} or dtype {sorted(map(str, dtypes))}")
        self.row_shape, self.dtype = shapes.pop(), dtypes.pop()
        self.row_bytes = math.prod(self.row_shape) * self.dtype.itemsize
        for p, t in zip(self.paths, self.layouts):
            if t.end - t.begin != t.shape[0] * self.row_bytes:
                raise ValueError(f"{p.name}: the tensor's byte range does not match its shape")
        self.starts = np.cumsum([0] + [t.shape[0] for t in self.layouts])
        self._fds: list[int] | None = None

    @property
    def shape(self) -> torch.Size:
        return torch.Size((int(self.starts[-1]), *self.row_shape))

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, idx: torch.Tensor | np.ndarray | slice) -> torch.Tensor:
        """Rows ``idx`` (a slice or integer indices in ``[0, N)``), ``[len(idx), ...]``.

        Raises:
            IndexError: an index out of range. OSError: a shard cannot be read or is shorter than its header says.
        """
        n = len(self)
        rows = np.arange(n)[idx] if isinstance(idx, slice) else np.asarray(torch.as_tensor(idx).cpu()).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise IndexError(f"row index out of range [0, {n})")
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        out = torch.empty((len(rows), *self.row_shape), dtype=self.dtype)
        raw = memoryview(out.view(-1).view(torch.uint8).numpy())
        shard = np.searchsorted(self.starts, ordered, side="right") - 1
        cuts = np.flatnonzero((np.diff(ordered) != 1) | (np.diff(shard) != 0)) + 1
        fds = self._open()
        rb = self.row_bytes
        for a, b in zip([0, *cuts.tolist()], [*cuts.tolist(), len(rows)]):
            if a == b:
                continue
            s = int(shard[a])
            offset = self.layouts[s].begin + int(ordered[a] - self.starts[s]) * rb
            if os.preadv(fds[s], [raw[a * rb:b * rb]], offset) != (b - a) * rb:
                raise OSError(f"{self.paths[s].name} is shorter than its header says")
        if not np.array_equal(order, np.arange(len(rows))):
            out[torch.from_numpy(order)] = out.clone()
        return out

    def _open(self) -> list[int]:
        if self._fds is None:
            self._fds = [os.open(p, os.O_RDONLY) for p in self.paths]
        return self._fds

    def close(self) -> None:
        for fd in self._fds or []:
            os.close(fd)
        self._fds = None

    def __del__(self) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fds": None}


@dataclass
class SplitFeatures:
    """Cached backbone outputs of one split.

    The K−1 IM inputs are held as one row-major float16 tensor ``stacked`` ``[N, ΣD_k]`` (as cached),
    so that a mini-batch of every IM input is one row gather, converted to float32 (:meth:`rows`).
    ``stacked`` and ``logits`` are in memory, or, for a split too large for it, :class:`ShardedRows`
    read from the cache's shards on demand (:meth:`FeatureCache.load`); both index the same way.

    Attributes:
        stacked: ``[N, ΣD_k]`` float16, the IM inputs after blocks 1..K−1 side by side.
        dims: ``[D_1..D_{K−1}]``.
        logits: ``[N, C]`` float32, the backbone's own classifier (exit K).
        labels: ``[N]`` int64 (always in memory).
    """

    stacked: torch.Tensor | ShardedRows
    dims: list[int]
    logits: torch.Tensor | ShardedRows
    labels: torch.Tensor

    @classmethod
    def from_im_inputs(cls, im_inputs: list[torch.Tensor], logits: torch.Tensor, labels: torch.Tensor
                       ) -> "SplitFeatures":
        """From the K−1 IM inputs ``[N, D_k]`` (stored as float16), logits ``[N, C]`` and labels ``[N]``."""
        return cls(torch.cat([x.to(torch.float16) for x in im_inputs], 1), [int(x.shape[1]) for x in im_inputs],
                   logits, labels)

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_exits(self) -> int:
        return len(self.dims) + 1

    @property
    def on_disk(self) -> bool:
        """Whether the rows are read from the cache's shards on demand."""
        return isinstance(self.stacked, ShardedRows)

    @property
    def im_inputs(self) -> list[torch.Tensor]:
        """The K−1 IM inputs of the whole split, float32 ``[N, D_k]`` each (a copy: prefer :meth:`rows`)."""
        return self.rows(slice(None))

    def rows(self, idx: torch.Tensor | slice) -> list[torch.Tensor]:
        """The K−1 IM inputs of rows ``idx``, float32 ``[B, D_k]`` each, from one gather of ``stacked``."""
        return list(self.stacked[idx].float().split(self.dims, 1))

    @classmethod
    def concat(cls, parts: list["SplitFeatures"]) -> "SplitFeatures":
        """The rows of ``parts`` (in memory) one after the other (shards of one split)."""
        return cls(torch.cat([p.stacked for p in parts]), list(parts[0].dims), torch.cat([p.logits for p in parts]),
                   torch.cat([p.labels for p in parts]))

    def in_memory(self) -> "SplitFeatures":
        """This split with every tensor in memory (itself where it already is)."""
        return self.subset(slice(None)) if self.on_disk else self

    def subset(self, idx: torch.Tensor) -> "SplitFeatures":
        """The rows ``idx`` (a LongTensor or slice) of every tensor, in memory."""
        return SplitFeatures(self.stacked[idx], list(self.dims), self.logits[idx], self.labels[idx])


def state_dict_sha256(model: torch.nn.Module) -> str:
    """A content hash of a model's parameters and buffers (names, shapes, dtypes, bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def feature_key(**parts: Any) -> str:
    """Hash of the JSON of ``parts`` (weights hash, data key, preprocessing, exit design, version)."""
    blob = json.dumps({**parts, "features_version": FEATURES_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def place(adapter: Any, device: torch.device) -> Callable[[Any], Any]:
    """Put the frozen backbone on ``device`` (eval mode; channels-last on CUDA where it has
    convolutions, contiguous on the CPU: docs/decisions.md H3) and return ``input -> input`` that
    moves a batch there alike."""
    cuda = device.type == "cuda"
    adapter.eval().to(device)
    convs = cuda and any(isinstance(m, torch.nn.Conv2d) for m in adapter.modules())
    if convs:
        adapter.to(memory_format=torch.channels_last)

    def move(x: Any) -> Any:
        if cuda and hasattr(x, "to"):
            x = x.to(device, non_blocking=True)
            if convs and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
        return x
    return move


def backbone_precision(device: torch.device) -> Any:
    """The backbone pass's precision: bf16 autocast on CUDA, float32 on the CPU (a context manager)."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def _passes(adapter: Any, loader: DataLoader, desc: str, done_batches: int = 0, total_batches: int | None = None,
            device: torch.device | None = None) -> Any:
    """Yield ``(im_inputs float16, logits float32, labels int64)`` of each batch of ``loader``, on the
    CPU. On CUDA the backbone runs under bf16 autocast, channels-last where it has convolutions."""
    device = device or torch.device("cpu")
    move = place(adapter, device)
    with torch.no_grad(), backbone_precision(device):
        for x, y in tqdm(loader, desc=desc, unit="batch", leave=False, initial=done_batches, total=total_batches):
            ims, out = adapter.forward_exits(move(x))
            yield [f.to(torch.float16).cpu() for f in ims], out.float().cpu(), torch.as_tensor(y).long()


def _gather(parts: list[tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]], num_ims: int) -> SplitFeatures:
    return SplitFeatures.from_im_inputs([torch.cat([p[0][k] for p in parts]) for k in range(num_ims)],
                                        torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts]))


def extract(adapter: Any, dataset: Dataset, batch_size: int = 256, num_workers: int = 1,
            desc: str = "features", collate_fn: Callable | None = None) -> SplitFeatures:
    """Run the frozen backbone over ``dataset`` (``(input, label)`` pairs) once, in memory.

    Returns:
        the split's :class:`SplitFeatures` (IM inputs stored as float16, returned as float32).
    """
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_fn, persistent_workers=False)
    return _gather(list(_passes(adapter, loader, desc)), adapter.num_blocks - 1)


def _save(split: SplitFeatures, path: Path) -> None:
    save_hashed({"im_inputs": split.stacked, "logits": split.logits, "labels": split.labels}, path,
                metadata={"eebench_dims": json.dumps(split.dims)})


def _check_shard(shapes: dict[str, tuple[int, ...]], metadata: dict[str, str], num_exits: int) -> list[int]:
    """The IM input dims of a shard, after checking its tensors agree with each other and with K."""
    dims = json.loads(metadata["eebench_dims"])
    if len(dims) != num_exits - 1 or shapes["im_inputs"][1:] != (sum(dims),):
        raise ValueError(f"IM inputs of shape {shapes['im_inputs']} do not match K = {num_exits}, dims {dims}")
    if not shapes["logits"][0] == shapes["im_inputs"][0] == shapes["labels"][0]:
        raise ValueError("row counts differ between tensors")
    return dims


def _load(path: Path, num_exits: int) -> SplitFeatures:
    t, metadata = load_verified(path)
    dims = _check_shard({k: tuple(v.shape) for k, v in t.items()}, metadata, num_exits)
    return SplitFeatures(t["im_inputs"], dims, t["logits"].float(), t["labels"].long())


def _open_on_disk(paths: list[Path], num_exits: int) -> SplitFeatures:
    """A split whose IM inputs and logits stay in its shards (:class:`ShardedRows`), each shard
    checked against its content hashes first (read in chunks).

    Raises:
        ValueError, OSError: a shard fails its check or cannot be read; the message names it.
    """
    layouts, dims = [], None
    for path in paths:
        try:
            lay, metadata = verify_file(path)
            dims = _check_shard({k: v.shape for k, v in lay.items()}, metadata, num_exits)
        except (ValueError, OSError, KeyError) as e:
            raise ValueError(f"{path.name}: {e}") from e
        layouts.append(lay)
    labels = ShardedRows(paths, [lay["labels"] for lay in layouts])[:]
    return SplitFeatures(ShardedRows(paths, [lay["im_inputs"] for lay in layouts]), dims,
                         ShardedRows(paths, [lay["logits"] for lay in layouts]), labels.long())


def shard_name(split: str, i: int) -> str:
    return f"{split}-{i:05d}.safetensors"


def _complete_shards(folder: Path, split: str, num_exits: int) -> tuple[int, int]:
    """``(shards, rows)`` already written for ``split`` in ``folder``, in order, each checked against
    its content hashes; the first one that fails its check, and every one after it, is deleted."""
    i = rows = 0
    while (folder / shard_name(split, i)).exists():
        try:
            rows += _load(folder / shard_name(split, i), num_exits).n
        except Exception as e:
            log.info("features: %s fails its check (%s); rebuilding from it", shard_name(split, i), type(e).__name__)
            break
        i += 1
    for stale in folder.glob(f"{split}-*.safetensors"):
        if int(stale.name[len(split) + 1:-len(".safetensors")]) >= i:
            stale.unlink()
    return i, rows


def extract_to(adapter: Any, dataset: Dataset, folder: Path, split: str, batch_size: int = 256,
               num_workers: int = 1, collate_fn: Callable | None = None, shard_rows: int = SHARD_ROWS,
               device: torch.device | None = None) -> int:
    """Run the frozen backbone over ``dataset``, writing ``folder/<split>-NNNNN.safetensors`` shards of
    ``shard_rows`` rows (rounded down to whole batches, at least one) as the pass goes; resumes after
    the shards a previous, interrupted pass completed (whole batches, so the rows are the same).

    Returns:
        the number of rows of the split.
    """
    per_shard = max(1, shard_rows // batch_size) * batch_size
    num_exits = adapter.num_blocks
    i, done = _complete_shards(folder, split, num_exits)
    n = len(dataset)
    if done:
        log.info("features: %s resumes after %d of %d rows (%d shard(s) complete)", split, done, n, i)
    if done >= n:
        return n
    cuda = device is not None and device.type == "cuda"
    loader = DataLoader(Subset(dataset, range(done, n)), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=collate_fn, persistent_workers=False, pin_memory=cuda,
                        prefetch_factor=4 if cuda and num_workers else None)
    parts, buffered = [], 0
    batches = -(-n // batch_size)
    for b, part in enumerate(_passes(adapter, loader, f"features {split}", done // batch_size, batches, device)):
        if b == 0:
            t_first = time.perf_counter()
        elif b == 1:
            left = (time.perf_counter() - t_first) * (batches - done // batch_size - 1)
            log.info("features: %s, about %.0f s for its %d rows left (from the second batch)", split, left, n - done)
        parts.append(part)
        buffered += len(part[2])
        if buffered >= per_shard:
            _save(_gather(parts, num_exits - 1), folder / shard_name(split, i))
            parts, buffered, i = [], 0, i + 1
    if parts:
        _save(_gather(parts, num_exits - 1), folder / shard_name(split, i))
    return n


class FeatureCache:
    """The on-disk cache of :class:`SplitFeatures`, one folder of shards per key under ``root``."""

    def __init__(self, root: Path):
        self.root = Path(root) / "features"
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / key

    def lock(self, key: str) -> FileLock:
        """A lock for building entry ``key``: concurrent runs wait for one build, then reuse it."""
        return FileLock(str(self.root / f".{key}.lock"))

    def exists(self, key: str) -> bool:
        return (self.path(key) / "meta.json").exists()

    def load(self, key: str, in_memory_bytes: int | None = None) -> tuple[dict[str, SplitFeatures], dict[str, Any]]:
        """Every split of entry ``key``: its shards concatenated in memory, or, where its IM inputs and
        logits take more than ``in_memory_bytes`` (default :data:`IN_MEMORY_BYTES`), left on disk and
        read by rows on demand. Every shard is checked against its content hashes either way.

        Raises:
            CorruptCacheError: the entry or one of its shards (named) cannot be read or is inconsistent.
        """
        limit = IN_MEMORY_BYTES if in_memory_bytes is None else in_memory_bytes
        folder = self.path(key)
        where = folder / "meta.json"
        try:
            meta = json.loads(where.read_text())
            splits = {}
            for s in meta["splits"]:
                paths = [folder / shard_name(s, i) for i in range(meta["shards"][s])]
                size = 0
                for where in paths:
                    lay, _ = tensor_layouts(where)
                    size += sum(lay[t].end - lay[t].begin for t in ("im_inputs", "logits"))
                if size > limit:
                    where = folder / f"{s}-*.safetensors"
                    split = _open_on_disk(paths, meta["num_exits"])
                    log.info("features: %s (%.1f GiB) is read from disk by rows", s, size / 2 ** 30)
                else:
                    shards = []
                    for where in paths:
                        shards.append(_load(where, meta["num_exits"]))
                    split = SplitFeatures.concat(shards)
                if split.n != meta["rows"][s]:
                    raise ValueError(f"{s} has {split.n} rows, meta.json says {meta['rows'][s]}")
                splits[s] = split
        except Exception as e:
            raise CorruptCacheError(
                f"feature cache {folder} is unreadable ({where.name}: {type(e).__name__}: {str(e)[:120]}); delete "
                f"it (rm -rf {folder}) and run again to rebuild it") from e
        return splits, meta

    def build(self, key: str, datasets: dict[str, Dataset], adapter: Any, meta: dict[str, Any],
              batch_size: int = 256, num_workers: int = 1, collate_fn: Callable | None = None,
              shard_rows: int = SHARD_ROWS, device: torch.device | None = None) -> Path:
        """Run the backbone (on ``device``, default the CPU) over every split into ``.<key>.partial/``
        (resuming what an interrupted build of the same key left there), then write ``meta.json``
        and rename it into place. Call under :meth:`lock`."""
        partial = self.root / f".{key}.partial"
        partial.mkdir(exist_ok=True)
        for tmp in partial.glob(".*.tmp"):   # a shard being written when a pass was killed
            tmp.unlink()
        rows, shards = {}, {}
        for name, dataset in datasets.items():
            rows[name] = extract_to(adapter, dataset, partial, name, batch_size, num_workers, collate_fn, shard_rows,
                                    device)
            shards[name] = len(list(partial.glob(f"{name}-*.safetensors")))
        meta = {**meta, "splits": list(datasets), "rows": rows, "shards": shards}
        (partial / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
        final = self.path(key)
        try:
            os.rename(partial, final)
        except OSError:  # another process finished the same entry first: keep theirs
            if not self.exists(key):
                raise
            shutil.rmtree(partial, ignore_errors=True)
        return final
