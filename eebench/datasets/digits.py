"""The offline default: scikit-learn's bundled ``digits`` in the MNIST hub schema."""
from __future__ import annotations

import hashlib
from pathlib import Path

import datasets
import numpy as np

from eebench.data.spec import DatasetSpec, register_dataset


def build_digits(data_dir: Path | None = None, cache_dir: Path | None = None) -> tuple[datasets.DatasetDict, str]:
    """scikit-learn's bundled ``digits`` (1,797 8×8 images, 17 grey levels) in the MNIST hub schema."""
    from PIL import Image
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=[str(i) for i in range(10)])})
    ds = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(p, mode="L") for p in pixels], "label": bunch.target.tolist()},
        features=features)
    fingerprint = hashlib.sha256(pixels.tobytes() + bunch.target.astype(np.int64).tobytes()).hexdigest()[:16]
    return datasets.DatasetDict({"train": ds}), fingerprint


register_dataset(DatasetSpec(
    name="digits", hub_id=None, num_classes=10, default_backbone="vit_digits", builder=build_digits, bundled=True, hflip_invariant=False,
    description="scikit-learn digits, 1,797 8x8 images, bundled (offline default)"))
