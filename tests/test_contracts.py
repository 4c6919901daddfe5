"""Contract tests over every registered method, backbone and dataset: the lists come from the
registries, so a new plugin file (``methods/NAME.py``, ``eebench/backbones/NAME.py``,
``eebench/datasets/NAME.py``) is tested here with no other edit.

- method: its ``test_parameters`` fitted on the digits ViT's real feature cache; well-formed
  operating points, the same settings in the same order on val, calib and test (so that choices on
  val pair with figures on test), and the same points from a second fit with the same seed;
- backbone: randomly initialised on the dataset it declares; the exit view computes the backbone's
  own logits, its IM inputs have the declared widths, its cost profile sums to the plain model's
  Mul-Adds (``torch.utils.flop_counter``), and the feature cache key follows the weights;
- dataset: read from a tiny mirror in its hub schema (real rows where ``../shared/data`` has the
  dataset, synthetic ones in its schema otherwise); the schema, four disjoint non-empty splits,
  the same splits on every load and other ones under another ``split_seed``.
"""
from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch

from conftest import DATA_DIR, HUB_FEATURES, synthetic_split
from eebench.backbones import BACKBONES, create_model
from eebench.harness.config import resolve
from eebench.harness.costs import count_muladds, profile_exits
from eebench.data.spec import DATASETS, SPLITS
from eebench.data.splits import load_splits
from eebench.harness.method import load_methods
from eebench.harness.runner import RunOptions, exit_task, features_key, prepare_features

METHODS = load_methods().names()
BACKBONE_NAMES = BACKBONES.names()
DATASET_NAMES = DATASETS.names()


# --------------------------------------------------------------------------------------------
# methods


@pytest.fixture(scope="module")
def digits_features():
    """The digits ViT's feature cache (the backbone trains once per session, then is reused)."""
    config = resolve("threshold", "digits", None, 0)
    return prepare_features(config.dataset, config.backbone, config.dataset_params, RunOptions()), config


def _fit_and_predict(name: str, prepared, config) -> tuple[list[int], dict[str, list], dict[str, int]]:
    """Gate Mul-Adds, operating points per split, and split sizes, as :func:`eebench.harness.runner.run` gets them."""
    method = load_methods().get(name)
    params = {**method.parameters, **method.test_parameters}
    task, _, _ = exit_task(prepared, config)
    torch.manual_seed(0)
    fitted = method.fit(task, params, 0)
    splits = {"val": task.val, "calib": prepared.features["calib"], "test": prepared.features["test"]}
    return fitted.gate_muladds, {s: fitted.predict(f) for s, f in splits.items()}, {s: f.n for s, f in splits.items()}


@pytest.mark.parametrize("name", METHODS)
def test_method_contract(name, digits_features):
    prepared, config = digits_features
    K, C = prepared.costs.num_exits, prepared.splits.spec.num_classes
    gates, points, sizes = _fit_and_predict(name, prepared, config)
    assert len(gates) == K - 1 and all(isinstance(g, int) and g >= 0 for g in gates)
    settings = [p.setting for p in points["test"]]
    assert settings, f"{name} returned no operating point"
    for split, pts in points.items():
        assert [p.setting for p in pts] == settings, f"{split} points do not pair with the test points"
        n = sizes[split]
        for p in pts:
            assert p.exit_index.shape == (n,) and p.exit_index.min() >= 0 and p.exit_index.max() < K
            assert p.exit_probs.shape == (n, K, C)
            assert torch.allclose(p.exit_probs.sum(-1), torch.ones(n, K), atol=1e-4)
            assert p.gate_muladds == gates
    # a second fit with the same seed answers the same
    _, again, _ = _fit_and_predict(name, prepared, config)
    for a, b in zip(points["test"], again["test"]):
        assert np.array_equal(a.exit_index, b.exit_index), a.setting
        assert torch.equal(a.answered_probs, b.answered_probs), a.setting


# --------------------------------------------------------------------------------------------
# datasets


def _write_tiny_mirror(root, name: str, rows: int = 40) -> None:
    """``root/<name>/{train,test}.parquet``: the first rows of the real mirror where there is one,
    else synthetic rows in the hub's schema (``conftest.HUB_FEATURES``, or image + ClassLabel)."""
    spec = DATASETS.get(name)
    (root / name).mkdir(parents=True, exist_ok=True)
    for i, split in enumerate(("train", "test")):
        real = DATA_DIR / name / f"{split}.parquet"
        n = rows * (3 if split == "train" else 1)
        if real.exists():      # the mirrors are sorted by class: the first n // C rows of each class
            ds = datasets.load_dataset("parquet", data_files=str(real), split="train")
            labels = np.asarray(ds[spec.label_column])
            ds = ds.select(np.sort(np.concatenate([np.flatnonzero(labels == c)[:max(1, n // spec.num_classes)]
                                                   for c in range(spec.num_classes)])))
        elif name in HUB_FEATURES:
            labels = [j % spec.num_classes for j in range(max(n, 2 * spec.num_classes))]
            ds = synthetic_split(name, labels, first_row=i * 10_000, size=(32, 32))
        else:
            features = datasets.Features({spec.image_column: datasets.Image(),
                                          spec.label_column: datasets.ClassLabel(num_classes=spec.num_classes)})
            rng = np.random.default_rng(i)
            images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(n)]
            ds = datasets.Dataset.from_dict({spec.image_column: images,
                                             spec.label_column: [j % spec.num_classes for j in range(n)]},
                                            features=features)
        ds.to_parquet(str(root / name / f"{split}.parquet"))


@pytest.fixture(scope="module")
def tiny_mirrors(tmp_path_factory):
    """A ``--data-dir`` holding a tiny mirror of every hub dataset (derived datasets read them)."""
    root = tmp_path_factory.mktemp("mirrors")
    for name in DATASET_NAMES:
        spec = DATASETS.get(name)
        if spec.hub_id is not None:
            _write_tiny_mirror(root, name)
    return root


def _dataset_params(name: str) -> dict:
    """Defaults, with a small long-tail factor so that tiny mirrors keep every class."""
    params = dict(DATASETS.get(name).default_parameters())
    if "imbalance_factor" in params:
        params["imbalance_factor"] = 2
    params["holdout"] = "train"
    return params


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_dataset_contract(name, tiny_mirrors, tmp_path):
    spec = DATASETS.get(name)
    data_dir = None if spec.bundled else tiny_mirrors
    params = _dataset_params(name)
    splits = load_splits(name, params, data_dir, tmp_path / "cache")
    # schema: the declared columns, a ClassLabel of C classes, every label in range
    for split, ds in splits.source.items():
        assert {spec.image_column, spec.label_column} <= set(ds.column_names), split
        assert ds.features[spec.label_column].num_classes == spec.num_classes
    for s in SPLITS:
        labels = splits.labels(s)
        assert len(labels) > 0 and labels.min() >= 0 and labels.max() < spec.num_classes, s
    # four disjoint splits: no source row in two of them
    rows = {}
    for s, (source, idx) in splits.indices.items():
        rows.setdefault(source, []).append(np.asarray(idx))
    for source, parts in rows.items():
        joined = np.concatenate(parts)
        assert len(np.unique(joined)) == len(joined) and joined.max() < len(splits.source[source]), source
    # stable: the same splits on every load; another split seed carves other ones
    again = load_splits(name, params, data_dir, tmp_path / "cache")
    assert again.key() == splits.key()
    for s in SPLITS:
        assert np.array_equal(np.asarray(again.indices[s][1]), np.asarray(splits.indices[s][1])), s
    other = load_splits(name, {**params, "split_seed": 1}, data_dir, tmp_path / "cache")
    assert other.key() != splits.key()
    assert not np.array_equal(np.asarray(other.indices["val"][1]), np.asarray(splits.indices["val"][1]))


# --------------------------------------------------------------------------------------------
# backbones


def _backbone_dataset(name: str) -> str:
    """The dataset a backbone is tested on: one it is the default backbone of, else one it has a
    recipe for, else the one its published weights were trained on."""
    spec = BACKBONES.get(name)
    for ds in DATASET_NAMES:
        if DATASETS.get(ds).default_backbone == name:
            return ds
    if spec.dataset_recipes:
        return next(iter(spec.dataset_recipes))
    assert spec.pretrained_on, f"backbone {name}: no dataset names it as default and it has no pretrained_on"
    return spec.pretrained_on


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_backbone_contract(name, tiny_mirrors, tmp_path):
    spec = BACKBONES.get(name)
    ds_name = _backbone_dataset(name)
    data_dir = None if DATASETS.get(ds_name).bundled else tiny_mirrors
    splits = load_splits(ds_name, _dataset_params(ds_name), data_dir, tmp_path / "cache")
    C = splits.spec.num_classes
    torch.manual_seed(0)
    model = create_model(name, num_classes=C).eval()
    adapter = spec.adapter(model).eval()
    ds = spec.pipeline.dataset(splits, "test", model)
    collate = spec.pipeline.collate_fn or torch.utils.data.default_collate
    x = collate([ds[0], ds[1]])[0]
    with torch.no_grad():
        ims, logits = adapter.forward_exits(x)
        plain = model(x)
    # the exit view is the backbone itself: same logits, one IM input of the declared width per exit
    assert len(ims) == adapter.num_blocks - 1 >= 1
    assert [tuple(f.shape) for f in ims] == [(2, d) for d in adapter.im_dims]
    torch.testing.assert_close(logits, plain, rtol=1e-4, atol=1e-4)
    # the blocks' Mul-Adds add up to the plain forward's, counted by torch.utils.flop_counter
    example = spec.pipeline.example(splits, model)
    profile = profile_exits(adapter, example, C)
    with torch.no_grad():
        plain_muladds = count_muladds(model, example)[0]
    assert sum(profile.block_muladds) == plain_muladds
    assert all(b > 0 for b in profile.block_muladds) and all(m > 0 for m in profile.im_muladds)
    assert len(profile.im_muladds) == adapter.num_blocks - 1
    # the feature cache key follows the weights
    key = features_key(spec, model, adapter, splits)
    assert features_key(spec, model, adapter, splits) == key
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    assert features_key(spec, model, adapter, splits) != key
