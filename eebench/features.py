"""The feature cache: the frozen backbone runs once per (weights, dataset, splits, preprocessing).

For each split it stores the inputs of the K−1 IMs (one ``[N, D_k]`` float16 tensor per exit),
the backbone's own logits (exit K, ``[N, C]``) and the labels, as one safetensors file per
split under ``<cache>/features/<key>/``. The key is a content hash of the backbone weights, the
data (source fingerprint and split indices), the preprocessing and the exit design, so a stale
cache cannot be read. An entry is written into a temporary folder and renamed into place, so a
killed build leaves nothing that looks complete; every tensor carries a content hash, checked on
each load (:mod:`eebench.integrity`), so a corrupted file is reported, not trained on.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from filelock import FileLock
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from eebench.errors import CorruptCacheError
from eebench.integrity import load_verified, save_hashed

log = logging.getLogger(__name__)

FEATURES_VERSION = 2   # 2: every tensor carries a content hash (eebench.integrity)


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


@torch.no_grad()
def extract(adapter: Any, dataset: Dataset, batch_size: int = 256, num_workers: int = 1,
            desc: str = "features", collate_fn: Callable | None = None) -> SplitFeatures:
    """Run the frozen backbone over ``dataset`` (``(input, label)`` pairs) once.

    Returns:
        the split's :class:`SplitFeatures` (IM inputs stored as float16, returned as float32).
    """
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_fn, persistent_workers=False)
    feats: list[list[torch.Tensor]] = [[] for _ in range(adapter.num_blocks - 1)]
    logits, labels = [], []
    adapter.eval()
    for x, y in tqdm(loader, desc=desc, unit="batch", leave=False):
        ims, out = adapter.forward_exits(x)
        for store, f in zip(feats, ims):
            store.append(f.to(torch.float16))
        logits.append(out.float())
        labels.append(torch.as_tensor(y))
    return SplitFeatures([torch.cat(f) for f in feats], torch.cat(logits), torch.cat(labels).long())


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


class FeatureCache:
    """The on-disk cache of :class:`SplitFeatures`, one folder per key under ``root``."""

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
        """Load every split of entry ``key``.

        Raises:
            CorruptCacheError: the entry cannot be read or is inconsistent.
        """
        folder = self.path(key)
        try:
            meta = json.loads((folder / "meta.json").read_text())
            splits = {s: _load(folder / f"{s}.safetensors", meta["num_exits"]) for s in meta["splits"]}
        except Exception as e:
            raise CorruptCacheError(
                f"feature cache {folder} is unreadable ({type(e).__name__}: {str(e)[:120]}); delete it "
                f"(rm -rf {folder}) and run again to rebuild it") from e
        return splits, meta

    def save(self, key: str, splits: dict[str, SplitFeatures], meta: dict[str, Any]) -> Path:
        """Write entry ``key`` atomically (temporary folder, then rename)."""
        final = self.path(key)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=self.root))
        try:
            for name, split in splits.items():
                _save(split, tmp / f"{name}.safetensors")
            meta = {**meta, "splits": list(splits), "rows": {s: f.n for s, f in splits.items()}}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
            try:
                os.rename(tmp, final)
            except OSError:  # another process finished the same entry first: keep theirs
                if not self.exists(key):
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final
