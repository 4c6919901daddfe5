"""CIFAR-100-LT and CIFAR-10-LT: CIFAR with a long-tailed train split (the same code, checkable on
the CIFAR-10 data here).

Long tail (Cui et al., CVPR 2019; Cao et al., NeurIPS 2019 "LDAM"; the CIFAR-100-LT of JEI-DNN):
class i ∈ {0..C−1} keeps n_i = ⌊n_max · (1/ρ)^(i/(C−1))⌋ training images, ρ the imbalance factor
(``imbalance_factor``, 100) and n_max the per-class count of the balanced source split (its
smallest class count, so every n_i exists): 500 → 5 for CIFAR-100. The images kept are the first
n_i of a seeded permutation (``lt_seed``) of the class's rows, in source order afterwards. The
test split stays balanced, as in the long-tail literature; ``lt_test: true`` gives it the same
profile (n_max = its own per-class count, 100 → 1 on CIFAR-100), as the ``IMBALANCECIFAR100``
class of the JEI-DNN code does when it is built on the test split. The long-tailed train split is
kept whole (12,406 images for CIFAR-10-LT, as in LDAM): ``val`` and ``calib`` are carved from the
test split (``holdout: test``), so they follow its profile (``docs/decisions.md`` B4). Weights
that saw the base dataset's balanced train split (a published CIFAR-10 checkpoint, or a fine-tune
of one) are refused (``DatasetSpec.train_subset_of``).
A derived dataset is written once (:mod:`eebench.data.derived`), its key hashing the source's content
fingerprint and the long-tail parameters.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import numpy as np

from eebench.data.spec import DATASETS, DatasetSpec, register_dataset
from eebench.data.sources import load_source
from eebench.data.derived import derived_dataset
from eebench.errors import ConfigError, DataUnavailableError
from eebench.params import NON_NEGATIVE, Constraint, Range

#: Parameters of the long-tailed datasets (``--set dataset.KEY=VALUE``).
LONG_TAIL_PARAMETERS: dict[str, Any] = {
    "imbalance_factor": 100.0,  # ρ = n_max / n_min on train
    "lt_test": False,           # give the test split the same profile (JEI-DNN code) instead of keeping it balanced
    "lt_seed": 0,               # seed of the per-class permutation that picks the kept images
}
LONG_TAIL_CONSTRAINTS: dict[str, Constraint] = {"imbalance_factor": Range(1), "lt_seed": NON_NEGATIVE}
_LONG_TAIL_VERSION = 1


def long_tail_counts(n_max: int, num_classes: int, imbalance_factor: float) -> np.ndarray:
    """Images kept per class: n_i = ⌊n_max · (1/ρ)^(i/(C−1))⌋, i = 0..C−1 (the exponential profile
    of Cui et al. 2019 and LDAM, Cao et al. 2019).

    Args:
        n_max: images of class 0 (the per-class count of the balanced source).
        num_classes: C ≥ 2.
        imbalance_factor: ρ ≥ 1 (n_0 / n_{C−1}).

    Returns:
        ``[C]`` int64 counts, non-increasing.

    Raises:
        ConfigError: ρ < 1 or C < 2.
    """
    if imbalance_factor < 1.0:
        raise ConfigError(f"dataset.imbalance_factor={imbalance_factor}: must be >= 1 (n_max / n_min)")
    if num_classes < 2:
        raise ConfigError("a long tail needs at least 2 classes")
    i = np.arange(num_classes, dtype=np.float64)
    return np.floor(n_max * (1.0 / imbalance_factor) ** (i / (num_classes - 1))).astype(np.int64)


def long_tail_indices(labels: np.ndarray, counts: np.ndarray, seed: int) -> np.ndarray:
    """Rows kept by the long tail: for class i, the first ``counts[i]`` rows of a permutation of
    its rows drawn with ``seed`` (one generator, classes in order); returned sorted.

    Args:
        labels: ``[N]`` int class of each row.
        counts: ``[C]`` rows to keep per class.

    Raises:
        ConfigError: a class has fewer rows than asked.
    """
    rng = np.random.default_rng(seed)
    keep = []
    for c, n in enumerate(counts):
        rows = np.flatnonzero(labels == c)
        if len(rows) < n:
            raise ConfigError(f"class {c} has {len(rows)} rows, the long tail asks for {n}")
        keep.append(rows[rng.permutation(len(rows))[:n]])
    return np.sort(np.concatenate(keep)).astype(np.int64)


def long_tail(split: datasets.Dataset, label_column: str, num_classes: int, imbalance_factor: float,
              seed: int) -> datasets.Dataset:
    """A split cut to the long-tail profile (:func:`long_tail_counts`, :func:`long_tail_indices`),
    n_max being the split's smallest class count.

    Raises:
        DataUnavailableError: a class has no row in ``split``.
    """
    labels = np.asarray(split[label_column])
    per_class = np.bincount(labels, minlength=num_classes)
    if per_class.min() == 0:
        raise DataUnavailableError(
            f"class {int(per_class.argmin())} has no row in the {len(labels)}-row split the long tail is cut from: "
            f"the long tail needs every class; check the base dataset's files")
    n_max = int(per_class.min())
    return split.select(long_tail_indices(labels, long_tail_counts(n_max, num_classes, imbalance_factor), seed))


def _long_tail_builder(name: str, base: str):
    def build(data_dir: Path | None = None, cache_dir: Path | None = None,
              params: dict[str, Any] | None = None) -> tuple[datasets.DatasetDict, str]:
        """The long-tailed variant of ``base``, built once and cached (see the module docstring).

        Raises:
            DataUnavailableError: the base dataset cannot be loaded.
            ConfigError: a bad long-tail parameter.
        """
        params = {**LONG_TAIL_PARAMETERS, **(params or {})}
        spec = DATASETS.get(base)
        source, fingerprint = load_source(spec, data_dir, cache_dir)
        settings = {k: params[k] for k in LONG_TAIL_PARAMETERS}

        def derive() -> datasets.DatasetDict:
            factor, seed = float(params["imbalance_factor"]), int(params["lt_seed"])
            out = {"train": long_tail(source["train"], spec.label_column, spec.num_classes, factor, seed)}
            if "test" in source:
                out["test"] = (long_tail(source["test"], spec.label_column, spec.num_classes, factor, seed)
                               if params["lt_test"] else source["test"])
            return datasets.DatasetDict(out)

        return derived_dataset(name, {"base": base, "source": fingerprint, **settings, "version": _LONG_TAIL_VERSION},
                               derive, cache_dir)

    return build


for _name, _base, _backbone in (("cifar100-lt", "cifar100", "t2t_vit_14"), ("cifar10-lt", "cifar10", "cifar_resnet20")):
    _spec = DATASETS.get(_base)
    register_dataset(DatasetSpec(
        name=_name, hub_id=None, num_classes=_spec.num_classes, default_backbone=_backbone,
        image_column=_spec.image_column, label_column=_spec.label_column, hflip_invariant=_spec.hflip_invariant,
        builder=_long_tail_builder(_name, _base), parameters={**LONG_TAIL_PARAMETERS, "holdout": "test"},
        train_subset_of=_base,
        parameter_constraints=dict(LONG_TAIL_CONSTRAINTS),
        description=f"{_base} with a long-tailed train split (exponential profile, imbalance 100; "
                    f"derived from {_spec.hub_id})"))
