"""What a dataset is: :class:`DatasetSpec`, the registry every dataset plugin of
:mod:`eebench.datasets` fills, the four split names and the split parameters every dataset takes
(``--set dataset.KEY=VALUE``)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import datasets

from eebench.params import FRACTION, NON_NEGATIVE, Constraint, OneOf, Range
from eebench.registry import Registry

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "calib", "test")

#: Dataset parameters every dataset accepts, with their defaults (``--set dataset.KEY=VALUE``).
SPLIT_PARAMETERS: dict[str, Any] = {
    "split_seed": 0,        # seed of the train/val/calib/test carving
    "val_fraction": 0.15,   # of the source's train split
    "calib_fraction": 0.10,  # of the source's train split
    "test_fraction": 0.20,  # only for sources without a test split
    "holdout": "auto",      # where val and calib come from: train | test | auto (by backbone)
    "policy_fraction": 0.5,  # of val, where exit policies learn (0: they learn on train); the rest selects
    "train_fraction": 1.0,   # of train kept (stratified by class, seeded): a first look at a new setting
}
SPLIT_CONSTRAINTS: dict[str, Constraint] = {"split_seed": NON_NEGATIVE, "val_fraction": FRACTION,
                                            "calib_fraction": FRACTION, "test_fraction": FRACTION,
                                            "holdout": OneOf(("auto", "train", "test")), "policy_fraction": FRACTION,
                                            "train_fraction": Range(0, 1, open_lo=True)}


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset.

    Attributes:
        name: the harness name (``--dataset``), also the mirror folder name.
        hub_id: Hugging Face hub id, or None for a bundled/derived dataset.
        num_classes: C.
        default_backbone: the backbone used when ``--backbone`` is not given.
        image_column, label_column: column names in the hub's schema.
        hub_config: the hub config name (e.g. SVHN's ``cropped_digits``).
        builder: for bundled/derived datasets, ``(data_dir, cache_dir) -> (DatasetDict, fingerprint)``;
            a builder that declares a ``params`` argument also gets the resolved dataset parameters.
        parameters: dataset-specific parameters and defaults, on top of :data:`SPLIT_PARAMETERS`.
        parameter_constraints: what those allow (:mod:`eebench.params`).
        bundled: the data ship with a dependency (``--data-dir`` does not apply).
        hflip_invariant: declared: a horizontal flip preserves every class (True for natural images,
            False for digits); None where nobody declared it (training recipes then do not flip).
        generic: the input and label columns and C are read from the data (``hf:`` ids and folders,
            :mod:`eebench.datasets.generic`); ``num_classes`` is 0 until then.
        train_subset_of: the dataset whose train split this one's is cut from (a long tail): weights
            trained on that dataset saw more than this train split and are refused.
    """

    name: str
    hub_id: str | None
    num_classes: int
    default_backbone: str
    description: str
    image_column: str = "image"
    label_column: str = "label"
    hub_config: str | None = None
    builder: Callable[..., tuple[datasets.DatasetDict, str]] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    parameter_constraints: dict[str, Constraint] = field(default_factory=dict)
    bundled: bool = False
    hflip_invariant: bool | None = None
    generic: bool = False
    train_subset_of: str | None = None

    def default_parameters(self) -> dict[str, Any]:
        return {**SPLIT_PARAMETERS, **self.parameters}

    def constraints(self) -> dict[str, Constraint]:
        return {**SPLIT_CONSTRAINTS, **self.parameter_constraints}


#: Every dataset; the plugin modules of :mod:`eebench.datasets` register themselves on first use.
DATASETS: Registry[DatasetSpec] = Registry("dataset", package="eebench.datasets")


def register_dataset(spec: DatasetSpec, aliases: tuple[str, ...] = ()) -> DatasetSpec:
    return DATASETS.register(spec.name, spec, aliases)


