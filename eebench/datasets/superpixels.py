"""MNIST superpixels: every MNIST digit as a SLIC superpixel graph (:mod:`eebench.data.graphs` has the
construction and its measurements), a dataset derived from ``mnist`` and cached."""
from __future__ import annotations

import logging
from pathlib import Path

import datasets

from eebench.data.spec import DATASETS, DatasetSpec, register_dataset
from eebench.data.sources import load_source
from eebench.data.derived import derived_dataset
from eebench.data.graphs import NUM_NEIGHBOURS, N_SEGMENTS, build_graphs, builder_parameters, mnist_images, to_dataset

log = logging.getLogger(__name__)


def build_mnist_superpixels(data_dir: Path | None = None, cache_dir: Path | None = None,
                            n_jobs: int | None = None) -> tuple[datasets.DatasetDict, str]:
    """Load (or build once and cache) MNIST superpixel graphs from the ``mnist`` source.

    Returns:
        ``(DatasetDict(train=60k graphs, test=10k graphs), key)``; the key is the content hash of
        the MNIST source fingerprint and :func:`eebench.data.graphs.builder_parameters`.

    Raises:
        DataUnavailableError: MNIST cannot be loaded (see :func:`eebench.data.sources.load_source`).
        CorruptCacheError: the cached entry cannot be read.
    """
    source, fingerprint = load_source(DATASETS.get("mnist"), data_dir, cache_dir)

    def derive() -> datasets.DatasetDict:
        log.info("mnist-superpixels: SLIC, %d segments, %d-NN, from MNIST %s", N_SEGMENTS, NUM_NEIGHBOURS, fingerprint)
        return datasets.DatasetDict({
            name: to_dataset(build_graphs(mnist_images(split), n_jobs, desc=f"superpixels {name}"), split["label"])
            for name, split in source.items()})

    return derived_dataset("mnist-superpixels", {"mnist": fingerprint, **builder_parameters()}, derive, cache_dir)


register_dataset(DatasetSpec(
    name="mnist-superpixels", hub_id=None, num_classes=10, default_backbone="grit",
    builder=build_mnist_superpixels, image_column="node_feat",
    description="MNIST as SLIC superpixel graphs (<=75 nodes: intensity, x, y; 8-NN edges), derived, cached"),
    aliases=("mnist_superpixels", "mnist-sp"))
