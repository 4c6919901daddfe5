"""MNIST superpixel graphs: a derived dataset, and the dense tensors a graph transformer reads.

Each MNIST digit becomes a graph as in Knyazev et al. (NeurIPS 2019, "Understanding attention and
generalization in graph neural networks") and the MNIST graphs of Dwivedi et al. ("Benchmarking
graph neural networks", JMLR 2023):

1. **Superpixels.** :func:`skimage.segmentation.slic` on the 28×28 grey image scaled to [0, 1],
   ``n_segments=75``, ``compactness=0.25``, ``channel_axis=None``, ``min_size_factor=0.8`` (pieces
   smaller than that fraction of the nominal segment size merge into a neighbour; why 0.8:
   ``docs/decisions.md`` B3). A digit with more than 75 segments is segmented again with the next
   setting of :data:`SLIC_ATTEMPTS` (factor 1.0, then ``n_segments=64``), as Knyazev et al. re-run
   SLIC with fewer requested segments until at most 75 remain.
2. **Node features** ``[n, 3]``: mean intensity of the superpixel in [0, 1], and its centroid
   ``(x, y) = (column, row) / 27`` in [0, 1] (:func:`scipy.ndimage.mean`,
   :func:`scipy.ndimage.center_of_mass`).
3. **Edges**: each node to its 8 nearest other nodes by centroid distance (a k-d tree,
   :class:`scipy.spatial.cKDTree`), ``edge_index [2, 8n]`` with row 0 the node and row 1 its
   neighbour, grouped by node; the graph is directed (out-degree exactly 8).

The dataset (``mnist-superpixels``, :mod:`eebench.datasets.superpixels`) is built once from the
``mnist`` source with a progress bar and parallel workers and cached (:mod:`eebench.data.derived`), the
key hashing the MNIST source fingerprint and every builder parameter. Schema: the columns of the hub's graph datasets
(``graphs-datasets/MNIST``: ``node_feat`` ``[n, F]``, ``edge_index`` ``[2, E]``, ``num_nodes``),
with the class as a ClassLabel column ``label`` as in ``ylecun/mnist`` (instead of their ``y``
list) and without their ``edge_attr`` and ``pos`` (the centroid is in ``node_feat``); node and
edge counts against the hub's copy: ``docs/decisions.md`` B3. MNIST's train (60k) / test (10k) splits are kept,
so the harness carves train / val / calib / test as for MNIST.

The tensors a graph transformer reads (:func:`rrwp`, :func:`collate_graphs`, :class:`GraphBatch`)
are here too; :class:`eebench.backbones.grit.GraphPipeline` ties them to a backbone.
"""
from __future__ import annotations

import logging
import os
from typing import Any, NamedTuple

import datasets
import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset
from tqdm.auto import tqdm


log = logging.getLogger(__name__)

#: Builder parameters (all of them enter the cache key).
N_SEGMENTS = 75
COMPACTNESS = 0.25
MAX_NODES = 75
#: ``(n_segments, min_size_factor)`` of SLIC tried in turn until a digit has at most
#: :data:`MAX_NODES` segments (see the module docstring).
SLIC_ATTEMPTS = ((N_SEGMENTS, 0.8), (N_SEGMENTS, 1.0), (64, 0.8))
NUM_NEIGHBOURS = 8
#: Centroid coordinates are divided by this (the largest pixel index of a 28×28 image).
COORD_SCALE = 27.0
BUILDER_VERSION = 1

GRAPH_FEATURES = datasets.Features({
    "node_feat": datasets.List(datasets.List(datasets.Value("float32"), length=3)),
    "edge_index": datasets.List(datasets.List(datasets.Value("int64")), length=2),
    "num_nodes": datasets.Value("int64"),
    "label": datasets.ClassLabel(names=[str(i) for i in range(10)]),
})


# --------------------------------------------------------------------------------------------
# one digit → one graph
def slic_superpixels(image: np.ndarray) -> np.ndarray:
    """SLIC superpixels of one grey image, with at most :data:`MAX_NODES` segments.

    Args:
        image: ``[H, W]`` uint8 (0..255).

    Returns:
        ``[H, W]`` int labels ``0..n-1`` (every label present), ``n ≤ MAX_NODES``.

    Raises:
        ValueError: ``image`` is not 2-D, or no setting of :data:`SLIC_ATTEMPTS` brings the count
            down to :data:`MAX_NODES` (never seen on MNIST).
    """
    from skimage.segmentation import slic

    if image.ndim != 2:
        raise ValueError(f"slic_superpixels expects one [H, W] grey image, got shape {image.shape}")
    scaled = image.astype(np.float64) / 255.0
    for n_segments, factor in SLIC_ATTEMPTS:
        segments = slic(scaled, n_segments=n_segments, compactness=COMPACTNESS, channel_axis=None,
                        start_label=0, min_size_factor=factor)
        _, segments = np.unique(segments, return_inverse=True)  # labels 0..n-1 with none missing
        segments = segments.reshape(image.shape)
        if segments.max() + 1 <= MAX_NODES:
            return segments
    raise ValueError(f"SLIC left {segments.max() + 1} > {MAX_NODES} segments even with n_segments={n_segments}, "
                     f"min_size_factor={factor}")


def superpixel_graph(image: np.ndarray) -> dict[str, Any]:
    """The superpixel graph of one MNIST digit.

    Args:
        image: ``[28, 28]`` uint8.

    Returns:
        ``{"node_feat": [n, 3] float32 (intensity, x, y, each in [0, 1]), "edge_index": [2, 8n]
        int64 (node, neighbour), "num_nodes": n}``.
    """
    from scipy import ndimage
    from scipy.spatial import cKDTree

    segments = slic_superpixels(image)
    n = int(segments.max()) + 1
    index = np.arange(n)
    intensity = ndimage.mean(image.astype(np.float64) / 255.0, segments, index)
    rows, cols = np.asarray(ndimage.center_of_mass(np.ones(image.shape), segments, index)).T
    centroids = np.stack([cols, rows], axis=1) / COORD_SCALE                      # (x, y)
    node_feat = np.column_stack([intensity, centroids]).astype(np.float32)
    # k+1 nearest including the node itself; drop the node (or, if another centroid coincides
    # with it and the node itself fell outside the k+1, the farthest one).
    _, nearest = cKDTree(centroids).query(centroids, k=NUM_NEIGHBOURS + 1)
    others = nearest != index[:, None]
    others[others.all(axis=1), -1] = False
    neighbours = nearest[others].reshape(n, NUM_NEIGHBOURS)
    edge_index = np.stack([np.repeat(index, NUM_NEIGHBOURS), neighbours.reshape(-1)]).astype(np.int64)
    return {"node_feat": node_feat, "edge_index": edge_index, "num_nodes": n}


def _graphs_of(images: np.ndarray) -> list[dict[str, Any]]:
    return [superpixel_graph(im) for im in images]


def build_graphs(images: np.ndarray, n_jobs: int | None = None, chunk: int = 500,
                 desc: str = "superpixels") -> list[dict[str, Any]]:
    """:func:`superpixel_graph` of every image, in chunks over ``n_jobs`` processes (joblib),
    with a progress bar (in images).

    Args:
        images: ``[N, 28, 28]`` uint8.
        n_jobs: worker processes (default: the CPU count, at most 8); with 1, or with a single
            chunk (starting workers would cost more than they save), it runs in this process.

    Returns:
        N graphs in order (deterministic: SLIC and the k-d tree have no randomness).
    """
    from joblib import Parallel, delayed

    n_jobs = n_jobs or min(os.cpu_count() or 1, 8)
    chunks = [images[i:i + chunk] for i in range(0, len(images), chunk)]
    out: list[dict[str, Any]] = []
    with tqdm(total=len(images), desc=desc, unit="img") as bar:
        if n_jobs == 1 or len(chunks) == 1:
            results = map(_graphs_of, chunks)
        else:
            results = Parallel(n_jobs=n_jobs, return_as="generator")(delayed(_graphs_of)(c) for c in chunks)
        for graphs in results:
            out.extend(graphs)
            bar.update(len(graphs))
    return out


# --------------------------------------------------------------------------------------------
# the derived dataset
def builder_parameters() -> dict[str, Any]:
    """Every parameter of the superpixel builder (what the cache key hashes besides the source)."""
    return {"n_segments": N_SEGMENTS, "compactness": COMPACTNESS, "max_nodes": MAX_NODES,
            "slic_attempts": [list(a) for a in SLIC_ATTEMPTS], "num_neighbours": NUM_NEIGHBOURS,
            "coord_scale": COORD_SCALE, "version": BUILDER_VERSION}


def to_dataset(graphs: list[dict[str, Any]], labels: list[int]) -> datasets.Dataset:
    """Graphs and labels as a hub-schema :class:`datasets.Dataset` (:data:`GRAPH_FEATURES`)."""
    return datasets.Dataset.from_dict(
        {"node_feat": [g["node_feat"] for g in graphs], "edge_index": [g["edge_index"] for g in graphs],
         "num_nodes": [g["num_nodes"] for g in graphs], "label": list(labels)}, features=GRAPH_FEATURES)


def mnist_images(split: datasets.Dataset) -> np.ndarray:
    """The ``image`` column of an MNIST hub split as ``[N, 28, 28]`` uint8."""
    return np.stack([np.asarray(im, dtype=np.uint8) for im in split["image"]])


# --------------------------------------------------------------------------------------------
# graphs → dense tensors
class GraphBatch(NamedTuple):
    """A dense, zero-padded batch of B graphs with at most N nodes each.

    Attributes:
        node_feat: ``[B, N, F]`` float32 node features (0 on padding).
        node_mask: ``[B, N]`` bool, True on real nodes.
        rrwp: ``[B, K, N, N]`` float32 relative random-walk probabilities, channels first like an
            image (``rrwp[b, k, i, j]`` = probability that a k-step walk from i ends at j; 0 on padding).
    """

    node_feat: torch.Tensor
    node_mask: torch.Tensor
    rrwp: torch.Tensor

    def to(self, device: torch.device | str) -> "GraphBatch":
        """The same batch with every tensor on ``device``."""
        return GraphBatch(*(t.to(device) for t in self))


def rrwp(edge_index: torch.Tensor, num_nodes: int, steps: int) -> torch.Tensor:
    """Relative random-walk probabilities (Ma et al., ICML 2023, GRIT, Eq. 1).

    ``P_ij = [I, M, M², …, M^{K−1}]_ij`` with ``M = D⁻¹A`` the random-walk matrix of the directed
    graph (``A_ij = 1`` for an edge i → j, ``D`` the out-degrees; a node without out-edges keeps
    a zero row). ``P[k, i, j]`` is the probability that a k-step walk from i ends at j (channels
    first, as :class:`GraphBatch` holds it); the diagonal ``P[:, i, i]`` is the node-level encoding.

    Args:
        edge_index: ``[2, E]`` int array or tensor (row 0 source i, row 1 target j).
        num_nodes: n.
        steps: K ≥ 1, the number of powers (K = 1 is the identity alone).

    Returns:
        ``[K, n, n]`` float32.

    Raises:
        ValueError: ``steps < 1`` or an edge outside ``0..n-1``.
    """
    if steps < 1:
        raise ValueError(f"rrwp steps must be >= 1, got {steps}")
    edge_index = np.asarray(edge_index, dtype=np.int64)
    if edge_index.size and (edge_index.min() < 0 or edge_index.max() >= num_nodes):
        raise ValueError(f"edge_index refers to nodes outside 0..{num_nodes - 1}")
    # numpy, not torch: per-graph 70×70 products are too small for torch's thread pool (decisions.md B3)
    adj = np.zeros((num_nodes, num_nodes))
    adj[edge_index[0], edge_index[1]] = 1.0
    walk = adj / np.maximum(adj.sum(1, keepdims=True), 1.0)
    powers = [np.eye(num_nodes)]
    for _ in range(steps - 1):
        powers.append(powers[-1] @ walk)
    return torch.from_numpy(np.stack(powers).astype(np.float32))


class GraphDataset(TorchDataset):
    """A hub-schema graph split as ``(graph, label)`` pairs: ``graph`` is ``(node_feat [n, F],
    rrwp [K, n, n])``, ready for :func:`collate_graphs`.

    Args:
        split: rows with ``node_feat``, ``edge_index``, ``num_nodes`` and a label column.
        rrwp_steps: K of :func:`rrwp`.
    """

    def __init__(self, split: datasets.Dataset, rrwp_steps: int, label_column: str = "label"):
        self.split = split.with_format("numpy")
        self.rrwp_steps, self.label_column = rrwp_steps, label_column

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[tuple[torch.Tensor, torch.Tensor], int]:
        row = self.split[int(i)]
        n = int(row["num_nodes"])
        x = torch.as_tensor(np.asarray(row["node_feat"], dtype=np.float32).reshape(n, -1))
        return (x, rrwp(row["edge_index"], n, self.rrwp_steps)), int(row[self.label_column])


def collate_graphs(items: list[tuple[tuple[torch.Tensor, torch.Tensor], int]]) -> tuple[GraphBatch, torch.Tensor]:
    """Pad a list of ``((node_feat [n_b, F], rrwp [K, n_b, n_b]), label)`` to the largest n_b.

    Returns:
        ``(GraphBatch with N = max n_b, labels [B] int64)``.
    """
    B = len(items)
    N = max(x.shape[0] for (x, _), _ in items)
    F, K = items[0][0][0].shape[1], items[0][0][1].shape[0]
    node_feat = torch.zeros(B, N, F)
    node_mask = torch.zeros(B, N, dtype=torch.bool)
    pairs = torch.zeros(B, K, N, N)
    for b, ((x, p), _) in enumerate(items):
        n = x.shape[0]
        node_feat[b, :n], node_mask[b, :n], pairs[b, :, :n, :n] = x, True, p
    labels = torch.tensor([y for _, y in items], dtype=torch.long)
    return GraphBatch(node_feat, node_mask, pairs), labels
