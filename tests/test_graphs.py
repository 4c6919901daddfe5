"""MNIST superpixel graphs built from real MNIST digits (``../shared/data/mnist``): SLIC segment
counts near 75, exactly 8 nearest neighbours per node, node features against skimage's
``regionprops``, determinism (serial and parallel), the cached derived dataset through
``load_splits``, RRWP against a hand-computed graph, and the padded batches of the pipeline."""
import logging

import datasets
import numpy as np
import pytest
import torch
from skimage.measure import regionprops

from conftest import DATA_DIR
from eebench.data import graphs

MNIST = DATA_DIR / "mnist"
needs_mnist = pytest.mark.skipif(not (MNIST / "test.parquet").exists(), reason="../shared/data/mnist is not present")


@pytest.fixture(scope="module")
def mnist_test() -> datasets.Dataset:
    return datasets.load_dataset("parquet", data_files={"test": str(MNIST / "test.parquet")})["test"]


@pytest.fixture(scope="module")
def digits(mnist_test) -> np.ndarray:
    """The first 40 MNIST test digits, ``[40, 28, 28]`` uint8."""
    return graphs.mnist_images(mnist_test.select(range(40)))


@pytest.fixture(scope="module")
def digit_graphs(digits) -> list[dict]:
    return graphs.build_graphs(digits, n_jobs=1)


@needs_mnist
def test_segment_counts_near_75(digits, digit_graphs):
    counts = np.array([g["num_nodes"] for g in digit_graphs])
    assert counts.max() <= graphs.MAX_NODES
    assert counts.min() >= 40                       # the 7x7-grid fallback gives ~45
    assert 66 <= counts.mean() <= 75                # Dwivedi et al.'s MNIST graphs: 70.6 on average
    for im, g in zip(digits[:5], digit_graphs[:5]):  # every pixel belongs to exactly one node
        seg = graphs.slic_superpixels(im)
        assert seg.shape == (28, 28) and set(np.unique(seg)) == set(range(g["num_nodes"]))


@needs_mnist
def test_every_node_has_its_8_nearest_neighbours(digit_graphs):
    for g in digit_graphs:
        n, ei = g["num_nodes"], g["edge_index"]
        assert ei.shape == (2, 8 * n) and ei.dtype == np.int64
        assert np.array_equal(np.bincount(ei[0], minlength=n), np.full(n, 8))
        xy = g["node_feat"][:, 1:].astype(np.float64)
        dist = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
        for i in range(n):
            nb = ei[1, ei[0] == i]
            assert len(set(nb)) == 8 and i not in nb
            others = np.sort(np.delete(dist[i], i))
            np.testing.assert_allclose(np.sort(dist[i, nb]), others[:8], rtol=1e-6)


@needs_mnist
def test_node_features_match_regionprops(digits, digit_graphs):
    for im, g in zip(digits[:10], digit_graphs[:10]):
        f = g["node_feat"]
        assert f.dtype == np.float32 and f.shape == (g["num_nodes"], 3)
        assert f.min() >= 0.0 and f.max() <= 1.0
        seg = graphs.slic_superpixels(im)
        for region in regionprops(seg + 1, intensity_image=im / 255.0):
            i = region.label - 1
            row, col = region.centroid
            np.testing.assert_allclose(f[i], [region.intensity_mean, col / 27, row / 27], atol=1e-6)
    # the digit is bright on black: every graph has stroke nodes and background nodes
    assert all(g["node_feat"][:, 0].max() > 0.3 and g["node_feat"][:, 0].min() < 0.05 for g in digit_graphs)


@needs_mnist
def test_deterministic_serial_and_parallel(digits, digit_graphs):
    again = graphs.build_graphs(digits[:10], n_jobs=2, chunk=5)
    for a, b in zip(digit_graphs[:10], again):
        assert a["num_nodes"] == b["num_nodes"]
        assert np.array_equal(a["node_feat"], b["node_feat"]) and np.array_equal(a["edge_index"], b["edge_index"])


def test_rrwp_by_hand():
    # star: 0 -> 1, 0 -> 2, 1 -> 0, 2 -> 0; M = D^-1 A
    edge_index = np.array([[0, 0, 1, 2], [1, 2, 0, 0]])
    M = np.array([[0, .5, .5], [1, 0, 0], [1, 0, 0]])
    M2 = np.array([[1, 0, 0], [0, .5, .5], [0, .5, .5]])
    P = graphs.rrwp(edge_index, 3, 3)
    assert P.shape == (3, 3, 3) and P.dtype == torch.float32
    np.testing.assert_allclose(P.numpy(), np.stack([np.eye(3), M, M2]))
    # a node without out-edges keeps a zero row (node 2 of 0 -> 1 -> 2)
    P = graphs.rrwp(np.array([[0, 1], [1, 2]]), 3, 2)
    np.testing.assert_allclose(P[1].numpy(), [[0, 1, 0], [0, 0, 1], [0, 0, 0]])
    with pytest.raises(ValueError):
        graphs.rrwp(edge_index, 2, 3)


def test_collate_pads_with_zeros():
    items = [((torch.ones(5, 3), torch.rand(4, 5, 5)), 3), ((torch.full((3, 3), 2.0), torch.rand(4, 3, 3)), 7)]
    batch, labels = graphs.collate_graphs(items)
    assert batch.node_feat.shape == (2, 5, 3) and batch.rrwp.shape == (2, 4, 5, 5)
    assert batch.node_mask.tolist() == [[True] * 5, [True] * 3 + [False] * 2]
    assert labels.tolist() == [3, 7]
    assert torch.equal(batch.rrwp[1, :, :3, :3], items[1][0][1])
    assert batch.rrwp[1, :, 3:].abs().sum() == 0 and batch.rrwp[1, :, :, 3:].abs().sum() == 0
    assert batch.node_feat[1, 3:].abs().sum() == 0


@pytest.fixture(scope="module")
def derived_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("derived-cache")


@pytest.fixture(scope="module")
def tiny_mirror(tmp_path_factory, mnist_test):
    """A local MNIST mirror in the hub schema holding 60 real train and 30 real test digits."""
    root = tmp_path_factory.mktemp("mirror")
    (root / "mnist").mkdir()
    mnist_test.select(range(100, 160)).to_parquet(str(root / "mnist" / "train.parquet"))
    mnist_test.select(range(200, 230)).to_parquet(str(root / "mnist" / "test.parquet"))
    return root


@needs_mnist
def test_derived_dataset_built_once_and_cached(tiny_mirror, mnist_test, derived_cache, caplog):
    from eebench.data.splits import load_splits

    params = {"val_fraction": 0.2, "calib_fraction": 0.2}
    with caplog.at_level(logging.INFO, logger="eebench.data.derived"):
        splits = load_splits("mnist-superpixels", params, tiny_mirror, derived_cache)
    assert "building" in caplog.text
    assert {s: len(i) for s, (_, i) in splits.indices.items()} == {"train": 36, "val": 12, "calib": 12, "test": 30}
    test = splits.split("test")
    assert test.features == graphs.GRAPH_FEATURES
    assert test["label"] == mnist_test.select(range(200, 230))["label"]
    row = test.with_format("numpy")[0]
    assert row["node_feat"].shape == (row["num_nodes"], 3) and row["edge_index"].shape == (2, 8 * row["num_nodes"])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="eebench.data.derived"):
        again = load_splits("mnist-superpixels", params, tiny_mirror, derived_cache)
    assert "building" not in caplog.text and again.key() == splits.key()
    assert len(list((derived_cache / "derived").glob("mnist-superpixels-*"))) == 1


@needs_mnist
def test_pipeline_batches_on_real_graphs(tiny_mirror, derived_cache):
    from eebench.backbones import BACKBONES, create_model
    from eebench.data.splits import load_splits

    splits = load_splits("mnist-superpixels", None, tiny_mirror, derived_cache)
    spec = BACKBONES.get("grit")
    model = create_model("grit", 10)
    ds = spec.pipeline.dataset(splits, "test", model)
    batch, labels = spec.pipeline.collate_fn([ds[i] for i in range(8)])
    n = np.array(splits.split("test")["num_nodes"][:8])
    N, K = n.max(), model.rrwp_steps
    assert batch.node_feat.shape == (8, N, 3) and batch.rrwp.shape == (8, K, N, N) and labels.shape == (8,)
    assert batch.node_mask.sum(1).tolist() == n.tolist()
    # step 0 is the identity on real nodes; every later step is a probability distribution per node
    sums = batch.rrwp.sum(-1)                                  # [8, K, N]
    real = batch.node_mask[:, None, :].expand_as(sums)
    torch.testing.assert_close(sums[real], torch.ones(int(real.sum())))
    assert torch.equal(torch.diagonal(batch.rrwp[:, 0], dim1=1, dim2=2), batch.node_mask.float())
    # Mul-Adds are counted on a test graph with the mean node count of train
    example = spec.pipeline.example(splits, model)
    mean_nodes = round(float(np.mean(splits.split("train")["num_nodes"])))
    counts = np.array(splits.split("test")["num_nodes"])
    assert example.node_feat.shape[0] == 1
    assert int(example.node_mask.sum()) == counts[np.argmin(np.abs(counts - mean_nodes))]
    with pytest.raises(Exception, match="augment"):
        spec.pipeline.dataset(splits, "train", model, augment="crop")
