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
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from filelock import FileLock
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from eebench.errors import CorruptCacheError
from eebench.integrity import load_verified, save_hashed

log = logging.getLogger(__name__)

FEATURES_VERSION = 3   # 2: every tensor carries a content hash (eebench.integrity); 3: splits in shards
#: Rows per shard (rounded down to whole batches of the pass): 41 MB of T2T-ViT-14 IM inputs.
SHARD_ROWS = 4096


@dataclass
class SplitFeatures:
    """Cached backbone outputs of one split.

    The K−1 IM inputs are held as one row-major float16 tensor ``stacked`` ``[N, ΣD_k]`` (as cached),
    so that a mini-batch of every IM input is one row gather, converted to float32 (:meth:`rows`).

    Attributes:
        stacked: ``[N, ΣD_k]`` float16, the IM inputs after blocks 1..K−1 side by side.
        dims: ``[D_1..D_{K−1}]``.
        logits: ``[N, C]`` float32, the backbone's own classifier (exit K).
        labels: ``[N]`` int64.
    """

    im_inputs_f16: InitVar[list[torch.Tensor]]
    logits: torch.Tensor
    labels: torch.Tensor
    stacked: torch.Tensor = field(init=False)
    dims: list[int] = field(init=False)

    def __post_init__(self, im_inputs_f16: list[torch.Tensor]) -> None:
        self.dims = [int(x.shape[1]) for x in im_inputs_f16]
        self.stacked = torch.empty(self.labels.shape[0], sum(self.dims), dtype=torch.float16)
        for view, x in zip(self.stacked.split(self.dims, 1), im_inputs_f16):
            view.copy_(x)

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_exits(self) -> int:
        return len(self.dims) + 1

    @property
    def im_inputs(self) -> list[torch.Tensor]:
        """The K−1 IM inputs of the whole split, float32 ``[N, D_k]`` each (a copy: prefer :meth:`rows`)."""
        return self.rows(slice(None))

    def rows(self, idx: torch.Tensor | slice) -> list[torch.Tensor]:
        """The K−1 IM inputs of rows ``idx``, float32 ``[B, D_k]`` each, from one gather of ``stacked``."""
        return list(self.stacked[idx].float().split(self.dims, 1))

    @classmethod
    def concat(cls, parts: list["SplitFeatures"]) -> "SplitFeatures":
        """The rows of ``parts`` one after the other (shards of one split)."""
        out = cls([], torch.cat([p.logits for p in parts]), torch.cat([p.labels for p in parts]))
        out.stacked, out.dims = torch.cat([p.stacked for p in parts]), list(parts[0].dims)
        return out

    def subset(self, idx: torch.Tensor) -> "SplitFeatures":
        """The rows ``idx`` (a LongTensor or slice) of every tensor."""
        return SplitFeatures(list(self.stacked[idx].split(self.dims, 1)), self.logits[idx], self.labels[idx])


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


def _passes(adapter: Any, loader: DataLoader, desc: str, done_batches: int = 0, total_batches: int | None = None,
            device: torch.device | None = None) -> Any:
    """Yield ``(im_inputs float16, logits float32, labels int64)`` of each batch of ``loader``, on the
    CPU. On CUDA the backbone runs under bf16 autocast, channels-last where it has convolutions."""
    device = device or torch.device("cpu")
    cuda = device.type == "cuda"
    adapter.eval().to(device)
    convs = cuda and any(isinstance(m, torch.nn.Conv2d) for m in adapter.modules())
    if convs:
        adapter.to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
        for x, y in tqdm(loader, desc=desc, unit="batch", leave=False, initial=done_batches, total=total_batches):
            if cuda and hasattr(x, "to"):
                x = x.to(device, non_blocking=True)
                if convs and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
            ims, out = adapter.forward_exits(x)
            yield [f.to(torch.float16).cpu() for f in ims], out.float().cpu(), torch.as_tensor(y).long()


def _gather(parts: list[tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]], num_ims: int) -> SplitFeatures:
    return SplitFeatures([torch.cat([p[0][k] for p in parts]) for k in range(num_ims)],
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
    tensors = {f"im_input_{k + 1}": x.contiguous() for k, x in enumerate(split.stacked.split(split.dims, 1))}
    tensors.update(logits=split.logits.contiguous(), labels=split.labels.contiguous())
    save_hashed(tensors, path)


def _load(path: Path, num_exits: int) -> SplitFeatures:
    t, _ = load_verified(path)
    im_inputs = [t[f"im_input_{k}"] for k in range(1, num_exits)]
    split = SplitFeatures(im_inputs, t["logits"].float(), t["labels"].long())
    if any(x.shape[0] != split.n for x in im_inputs) or split.logits.shape[0] != split.n:
        raise ValueError("row counts differ between tensors")
    return split


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

    def load(self, key: str) -> tuple[dict[str, SplitFeatures], dict[str, Any]]:
        """Load every split of entry ``key`` (its shards, concatenated).

        Raises:
            CorruptCacheError: the entry or one of its shards (named) cannot be read or is inconsistent.
        """
        folder = self.path(key)
        where = folder / "meta.json"
        try:
            meta = json.loads(where.read_text())
            splits = {}
            for s in meta["splits"]:
                shards = []
                for i in range(meta["shards"][s]):
                    where = folder / shard_name(s, i)
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
