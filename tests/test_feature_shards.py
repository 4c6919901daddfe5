"""The feature cache in shards: written as the pass goes, resumed after an interruption into the
same tensors as an uninterrupted pass, every shard checked on load (the digits ViT, real data)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from eebench import paths
from eebench.backbones import BACKBONES
from eebench.harness.config import resolve
from eebench.data.spec import SPLITS
from eebench.data.splits import load_splits
from eebench.errors import CorruptCacheError
from eebench.harness.features import FeatureCache
from eebench.integrity import load_verified
from eebench.backbones.weights import load_backbone


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


def test_a_split_read_from_disk_gives_the_rows_held_in_memory(digits_pass, tmp_path: Path) -> None:
    adapter, datasets = digits_pass
    cache = FeatureCache(tmp_path)
    cache.build("k", datasets, adapter, {"num_exits": adapter.num_blocks}, batch_size=64, num_workers=0, shard_rows=256)
    memory, _ = cache.load("k")
    disk, _ = cache.load("k", in_memory_bytes=0)
    for name, split in memory.items():
        other = disk[name]
        assert other.on_disk and not split.on_disk and torch.equal(other.labels, split.labels)
        idx = torch.randperm(split.n, generator=torch.Generator().manual_seed(0))[:300]   # across shards
        for a, b in zip(split.rows(idx), other.rows(idx)):
            assert torch.equal(a, b)
        assert torch.equal(split.logits[idx], other.logits[idx])
        assert torch.equal(split.stacked[100:700], other.stacked[100:700])
    with pytest.raises(IndexError):
        disk["train"].rows(torch.tensor([disk["train"].n]))
    shard = cache.path("k") / "train-00002.safetensors"
    data = bytearray(shard.read_bytes())
    data[-100] ^= 0xFF                        # one flipped byte in the labels' neighbour, logits
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptCacheError, match="train-00002.safetensors.*content hash"):
        cache.load("k", in_memory_bytes=0)


def test_a_run_on_features_read_from_disk_gives_the_same_record(cli, tmp_path: Path, monkeypatch) -> None:
    """JEI-DNN trains its IMs and gates on train by mini-batches: read from the shards, row by row,
    they are the same numbers."""
    from conftest import read_record
    from test_devices import without_timings

    from eebench.harness import features

    flags = ["run", "--method", "jei", "--dataset", "digits"]
    assert cli(*flags, "--out", tmp_path / "memory")[0] == 0
    monkeypatch.setattr(features, "IN_MEMORY_BYTES", 0)
    assert cli(*flags, "--out", tmp_path / "disk")[0] == 0
    a, b = without_timings(read_record(tmp_path / "memory")), without_timings(read_record(tmp_path / "disk"))
    assert a["operating_points"] and not [k for k in a if a[k] != b.get(k)]
