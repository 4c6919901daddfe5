"""CIFAR-100, SVHN, ImageNet and the long-tailed CIFAR variants through the real ``--data-dir`` path:
small synthetic datasets with the hub's exact ``Features``, written as parquet (or as class
folders for ImageNet), read by the harness's loaders; CIFAR-10-LT on the real CIFAR-10 mirror."""
import numpy as np
import pytest
from PIL import Image

from conftest import DATA_DIR, HUB_FEATURES, needs_shared, row_of, tagged_image, write_mirror
from eebench.data.spec import DATASETS
from eebench.data.splits import load_splits
from eebench.errors import DataUnavailableError


@pytest.mark.parametrize("name, num_classes, size", [("cifar100", 100, (32, 32)), ("svhn", 10, (32, 32)),
                                                     ("imagenet", 1000, (48, 40))])
def test_hub_schema_mirror_loads(tmp_path, name, num_classes, size):
    rng = np.random.default_rng(0)
    train, test = rng.integers(0, num_classes, 60).tolist(), rng.integers(0, num_classes, 20).tolist()
    write_mirror(tmp_path, name, {"train": train, "test": test}, size)
    splits = load_splits(name, None, data_dir=tmp_path, cache_dir=tmp_path / "cache")
    spec = DATASETS.get(name)
    assert spec.num_classes == num_classes
    assert splits.source["train"].features == HUB_FEATURES[name]
    assert {k: len(v[1]) for k, v in splits.indices.items()} == {"train": 45, "val": 9, "calib": 6, "test": 20}
    assert splits.labels("test").tolist() == test
    row = splits.split("val")[0]
    assert isinstance(row[spec.image_column], Image.Image) and row[spec.image_column].size == size
    assert row[spec.label_column] == train[row_of(row[spec.image_column])]


def test_svhn_extra_split_is_opt_in(tmp_path):
    write_mirror(tmp_path, "svhn", {"train": [0, 1, 2, 3] * 5, "test": [0, 1] * 5, "extra": [7] * 30})
    plain = load_splits("svhn", None, data_dir=tmp_path, cache_dir=tmp_path / "cache")
    assert len(plain.source["train"]) == 20
    extra = load_splits("svhn", {"extra": True}, data_dir=tmp_path, cache_dir=tmp_path / "cache")
    assert len(extra.source["train"]) == 50 and np.bincount(extra.source["train"]["label"])[7] == 30
    assert extra.fingerprint != plain.fingerprint
    (tmp_path / "svhn" / "extra.parquet").unlink()
    with pytest.raises(DataUnavailableError, match="extra.parquet is missing"):
        load_splits("svhn", {"extra": True}, data_dir=tmp_path, cache_dir=tmp_path / "cache")


def test_imagenet_from_class_folders(tmp_path):
    """A local ImageNet as train/ and val/ folders of wnid subfolders, through ``imagefolder``:
    labels in sorted wnid order, the val folder as the test source."""
    wnids = ["n01440764", "n01443537", "n01484850"]
    row = 0
    for split, per_class in (("train", 6), ("val", 2)):
        for wnid in wnids:
            (tmp_path / "imagenet" / split / wnid).mkdir(parents=True)
            for _ in range(per_class):
                tagged_image(row, (40, 30)).save(tmp_path / "imagenet" / split / wnid / f"{row}.png")
                row += 1
    splits = load_splits("imagenet", {"val_fraction": 0.2, "calib_fraction": 0.1}, data_dir=tmp_path,
                         cache_dir=tmp_path / "cache")
    assert splits.source["train"].features["label"].names == wnids
    assert len(splits.source["test"]) == 6 and sorted(splits.labels("test")) == [0, 0, 1, 1, 2, 2]
    for r in splits.split("train"):
        assert r["label"] == row_of(r["image"]) // 6       # rows 0-5 class 0, 6-11 class 1, ...


def test_imagenet_without_a_local_copy_says_what_to_provide(tmp_path):
    with pytest.raises(DataUnavailableError, match=r"no local copy of 'imagenet' in .*class subfolders"):
        load_splits("imagenet", None, data_dir=tmp_path)


def test_cifar100_lt_from_a_synthetic_mirror(tmp_path):
    """ρ = 10 over 100 classes of 20 images: n_i = ⌊20·0.1^(i/99)⌋ — 20, 9, 4, 2 at i = 0, 33, 66, 99;
    the kept rows are distinct rows of their class; the test split stays balanced unless ``lt_test``;
    the derived dataset is cached and reused."""
    write_mirror(tmp_path, "cifar100", {"train": [c for c in range(100) for _ in range(20)],
                                         "test": [c for c in range(100) for _ in range(3)]}, size=(8, 8))
    cache = tmp_path / "cache"
    splits = load_splits("cifar100-lt", {"imbalance_factor": 10}, data_dir=tmp_path, cache_dir=cache)
    train = splits.source["train"]
    counts = np.bincount(train["fine_label"], minlength=100)
    assert [counts[0], counts[33], counts[66], counts[99]] == [20, 9, 4, 2]
    assert all(counts[i] >= counts[i + 1] for i in range(99))
    rows = [row_of(im) for im in train["img"]]
    assert len(set(rows)) == len(rows)
    assert all(r // 20 == y for r, y in zip(rows, train["fine_label"]))
    assert np.bincount(splits.source["test"]["fine_label"]).tolist() == [3] * 100
    entries = list((cache / "derived").glob("cifar100-lt-*"))
    assert len(entries) == 1
    again = load_splits("cifar100-lt", {"imbalance_factor": 10}, data_dir=tmp_path, cache_dir=cache)
    assert again.fingerprint == splits.fingerprint and list((cache / "derived").glob("cifar100-lt-*")) == entries
    lt_test = load_splits("cifar100-lt", {"imbalance_factor": 10, "lt_test": True}, data_dir=tmp_path, cache_dir=cache)
    test_counts = np.bincount(lt_test.source["test"]["fine_label"], minlength=100)   # ⌊3·0.1^(i/99)⌋
    assert test_counts[0] == 3 and test_counts[99] == 0 and test_counts.sum() < 300


@needs_shared
def test_cifar10_lt_class_counts_on_real_cifar10(tmp_path):
    """The real CIFAR-10 mirror here has 5,000 train images per class: n_i = ⌊5000·0.01^(i/9)⌋,
    computed by hand: 5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50 (12,406 rows, LDAM's count);
    the long-tailed train split is kept whole (val and calib come from the balanced test split, which
    keeps its 1,000 per class); ``lt_test`` gives ⌊1000·0.01^(i/9)⌋."""
    cache = tmp_path / "cache"
    splits = load_splits("cifar10-lt", None, data_dir=DATA_DIR, cache_dir=cache)
    assert np.bincount(splits.source["train"]["label"]).tolist() == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert np.bincount(splits.source["test"]["label"]).tolist() == [1000] * 10
    assert len(splits.indices["train"][1]) == 12406 and splits.indices["val"][0] == "test"
    assert [len(splits.indices[s][1]) for s in ("val", "calib", "test")] == [1500, 1000, 7500]
    lt = load_splits("cifar10-lt", {"lt_test": True}, data_dir=DATA_DIR, cache_dir=cache)
    assert np.bincount(lt.source["test"]["label"]).tolist() == [1000, 599, 359, 215, 129, 77, 46, 27, 16, 10]
