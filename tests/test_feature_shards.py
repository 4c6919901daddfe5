"""The feature cache in shards: written as the pass goes, resumed after an interruption into the
same tensors as an uninterrupted pass, every shard checked on load (the digits ViT, real data)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from eebench import paths
from eebench.backbones import BACKBONES
from eebench.config import resolve
from eebench.data import SPLITS, load_splits
from eebench.errors import CorruptCacheError
from eebench.features import FeatureCache
from eebench.integrity import load_verified
from eebench.weights import load_backbone


class Interrupting(Dataset):
    """A dataset that raises KeyboardInterrupt when row ``at`` is read (as Ctrl-C would, mid-pass)."""

    def __init__(self, inner: Dataset, at: int):
        self.inner, self.at = inner, at

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int):
        if i == self.at:
            raise KeyboardInterrupt
        return self.inner[i]


@pytest.fixture(scope="module")
def digits_pass():
    config = resolve("threshold", "digits")
    splits = load_splits("digits", config.dataset_params)
    spec = BACKBONES.get(config.backbone)
    model, _ = load_backbone(config.backbone, splits, None, paths.cache_dir(), config.weights, config.recipe)
    datasets = {s: spec.pipeline.dataset(splits, s, model) for s in SPLITS}
    return spec.adapter(model), datasets


def files(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {p.name: load_verified(p)[0] for p in sorted(folder.glob("*.safetensors"))}


def test_interrupted_pass_resumes_to_the_same_cache(digits_pass, tmp_path: Path) -> None:
    adapter, datasets = digits_pass
    whole = FeatureCache(tmp_path / "a")
    whole.build("k", datasets, adapter, {"num_exits": adapter.num_blocks}, batch_size=64, num_workers=0, shard_rows=256)
    resumed = FeatureCache(tmp_path / "b")
    n_train = len(datasets["train"])
    with pytest.raises(KeyboardInterrupt):   # killed in the third shard of train
        resumed.build("k", {**datasets, "train": Interrupting(datasets["train"], 600)}, adapter,
                      {"num_exits": adapter.num_blocks}, batch_size=64, num_workers=0, shard_rows=256)
    partial = resumed.root / ".k.partial"
    assert sorted(p.name for p in partial.glob("*.safetensors")) == ["train-00000.safetensors", "train-00001.safetensors"]
    assert not resumed.exists("k")           # nothing that looks complete
    resumed.build("k", datasets, adapter, {"num_exits": adapter.num_blocks}, batch_size=64, num_workers=0, shard_rows=256)
    a, b = files(whole.path("k")), files(resumed.path("k"))
    assert list(a) == list(b) and len([n for n in a if n.startswith("train-")]) == -(-n_train // 256)
    for name in a:
        for t in a[name]:
            assert torch.equal(a[name][t], b[name][t]), (name, t)
    loaded, meta = resumed.load("k")
    assert loaded["train"].n == n_train and meta["rows"]["test"] == len(datasets["test"])


def test_a_shard_that_fails_its_check_is_named(digits_pass, tmp_path: Path) -> None:
    adapter, datasets = digits_pass
    cache = FeatureCache(tmp_path)
    cache.build("k", datasets, adapter, {"num_exits": adapter.num_blocks}, batch_size=64, num_workers=0, shard_rows=256)
    shard = cache.path("k") / "train-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-64])
    with pytest.raises(CorruptCacheError, match="train-00001.safetensors"):
        cache.load("k")
