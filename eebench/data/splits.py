"""The four disjoint splits of a dataset, carved with a seed (``split_seed``): ``train`` (IMs,
gates), ``val`` (thresholds, model selection), ``calib`` (conformal calibration only) and ``test``
(reported numbers only). ``val`` and ``calib`` are held out from the hub's train split
(``holdout: train``) or, for a backbone whose published weights were trained on the whole hub
train split, from the hub's test split (``holdout: test``): otherwise val and calib would hold
images the backbone has fitted, unlike test, and conformal sets calibrated on them under-cover
(``docs/decisions.md`` P7). ``holdout: auto`` (the default) is resolved to one of the two from the
backbone when a run is configured. A source without a test split gives ``test`` from its pool too.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from eebench.data.sources import load_source
from eebench.data.spec import DATASETS, SPLITS, DatasetSpec
from eebench.errors import ConfigError, DataUnavailableError


# --------------------------------------------------------------------------------------------
# splits
def indices_sha256(idx: np.ndarray) -> str:
    """A short content hash of row indices (int64 bytes), naming a split in records and cache keys."""
    return hashlib.sha256(np.asarray(idx).astype(np.int64).tobytes()).hexdigest()[:16]


@dataclass
class DataSplits:
    """The four splits of a dataset: rows of the source splits selected by seeded indices.

    Attributes:
        spec: the dataset.
        source: the source splits (hub schema).
        indices: split name → (source split name, int64 row indices).
        fingerprint: content hash of the source.
        params: the resolved dataset parameters.
    """

    spec: DatasetSpec
    source: datasets.DatasetDict
    indices: dict[str, tuple[str, np.ndarray]]
    fingerprint: str
    params: dict[str, Any]

    def split(self, name: str) -> datasets.Dataset:
        src, idx = self.indices[name]
        return self.source[src].select(idx)

    def labels(self, name: str) -> np.ndarray:
        src, idx = self.indices[name]
        return np.asarray(self.source[src][self.spec.label_column])[idx]

    def describe(self) -> dict[str, dict[str, Any]]:
        """For the run record: per split, its source split, size and a hash of its row indices."""
        return {name: {"source": src, "n": int(len(idx)), "indices_sha256": indices_sha256(idx)}
                for name, (src, idx) in self.indices.items()}

    def key(self) -> str:
        """A content key for (source data, split indices): what a feature cache or trained backbone depends on."""
        h = hashlib.sha256(self.fingerprint.encode())
        for name in SPLITS:
            h.update(name.encode() + self.describe()[name]["indices_sha256"].encode())
        return h.hexdigest()[:16]


def make_splits(n_train_source: int, n_test_source: int | None, params: dict[str, Any],
                n_validation_source: int | None = None) -> dict[str, tuple[str, np.ndarray]]:
    """Carve train / val / calib / test from the source splits with ``params['split_seed']``.

    With ``holdout: train`` (or ``auto``), ``val`` and ``calib`` take ``round(n · fraction)`` rows of
    the source's train split and ``train`` the rest; ``test`` is the source's test split. With
    ``holdout: test``, they are carved from the test split instead and ``train`` is the whole train
    split. A source with a ``validation`` split (``n_validation_source``; not with ``holdout: test``)
    gives ``val`` and ``calib`` from it, divided in the ratio ``val_fraction : calib_fraction``, and
    ``train`` is the whole train split. A source without a test split (``n_test_source is None``)
    gives ``test`` from the train split too (``test_fraction``). Deterministic for a seed.

    Returns:
        split name → (source split, sorted int64 row indices).

    Raises:
        ConfigError: fractions outside [0, 1), an unknown ``holdout``, or no rows left.
    """
    fr = {k: float(params[f"{k}_fraction"]) for k in ("val", "calib", "test")}
    for k, v in fr.items():
        if not 0.0 <= v < 1.0:
            raise ConfigError(f"dataset.{k}_fraction={v}: must be in [0, 1)")
    holdout = params.get("holdout", "auto")
    if holdout not in ("auto", "train", "test"):
        raise ConfigError(f"dataset.holdout={holdout!r}: must be train, test or auto")
    seed = int(params["split_seed"])
    if n_validation_source and holdout != "test":
        if fr["val"] <= 0.0:
            raise ConfigError("dataset.val_fraction=0 leaves val empty")
        perm = np.random.default_rng(seed).permutation(n_validation_source)
        n_val = round(n_validation_source * fr["val"] / (fr["val"] + fr["calib"]))
        out = {"val": ("validation", np.sort(perm[:n_val])), "calib": ("validation", np.sort(perm[n_val:]))}
        if n_test_source is None:
            perm = np.random.default_rng([seed, 2]).permutation(n_train_source)
            n_test = round(n_train_source * fr["test"])
            if not 0 < n_test < n_train_source:
                raise ConfigError(f"dataset.test_fraction={fr['test']} leaves an empty split of {n_train_source} rows")
            out.update(test=("train", np.sort(perm[:n_test])), train=("train", np.sort(perm[n_test:])))
        else:
            out.update(test=("test", np.arange(n_test_source)), train=("train", np.arange(n_train_source)))
        return {name: out[name] for name in SPLITS}
    if n_test_source is None or holdout != "test":
        pool_name, n_pool, rest_name = "train", n_train_source, "train"
    else:
        pool_name, n_pool, rest_name = "test", n_test_source, "test"
    perm = np.random.default_rng(seed).permutation(n_pool)
    sizes = {"val": round(n_pool * fr["val"]), "calib": round(n_pool * fr["calib"])}
    if n_test_source is None:
        sizes = {"test": round(n_pool * fr["test"]), **sizes}
    if sum(sizes.values()) >= n_pool:
        raise ConfigError(f"dataset split fractions {fr} leave no rows out of {n_pool}")
    out, start = {}, 0
    for name, size in sizes.items():
        out[name] = (pool_name, np.sort(perm[start:start + size]))
        start += size
    rest = (rest_name, np.sort(perm[start:]))
    if pool_name == "test":
        out["test"], out["train"] = rest, ("train", np.arange(n_train_source))
    else:
        out["train"] = rest
        if n_test_source is not None:
            out["test"] = ("test", np.arange(n_test_source))
    return {name: out[name] for name in SPLITS}


def subsample_train(indices: dict[str, tuple[str, np.ndarray]], labels: np.ndarray, fraction: float, seed: int
                    ) -> dict[str, tuple[str, np.ndarray]]:
    """Keep ``fraction`` of the ``train`` rows, stratified by class (scikit-learn's
    ``train_test_split``), seeded; the other splits are unchanged.

    Args:
        labels: the class of every row of ``train``'s source split, ``[N_source]``.

    Raises:
        ConfigError: ``fraction`` leaves fewer rows than classes, or a class with one row.
    """
    if fraction >= 1.0:
        return indices
    from sklearn.model_selection import train_test_split

    src, idx = indices["train"]
    try:
        keep, _ = train_test_split(idx, train_size=fraction, stratify=labels[idx], random_state=seed)
    except ValueError as e:
        raise ConfigError(f"dataset.train_fraction={fraction} cannot be stratified over {len(idx)} train rows "
                          f"({e}); raise it") from None
    return {**indices, "train": (src, np.sort(keep))}


def policy_rows(n_val: int, params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """Carve ``val`` into the rows exit policies learn on and the rows choices are made on.

    ``round(n_val · policy_fraction)`` rows, drawn with ``split_seed``, form the policy split; the
    rest stay ``val``. With ``policy_fraction`` 0, exit policies learn on ``train`` (None).

    Returns:
        ``(policy_rows, val_rows)``, sorted int64 positions within ``val``, or None.

    Raises:
        ConfigError: ``policy_fraction`` outside [0, 1), or a split left empty.
    """
    f = float(params.get("policy_fraction", 0.0))
    if not 0.0 <= f < 1.0:
        raise ConfigError(f"dataset.policy_fraction={f}: must be in [0, 1) (0: exit policies learn on train)")
    if f == 0.0:
        return None
    n_policy = round(n_val * f)
    if not 0 < n_policy < n_val:
        raise ConfigError(f"dataset.policy_fraction={f} leaves an empty split of the {n_val} val rows")
    perm = np.random.default_rng([int(params["split_seed"]), 1]).permutation(n_val)
    return np.sort(perm[:n_policy]), np.sort(perm[n_policy:])


def check_schema(spec: DatasetSpec, source: datasets.DatasetDict) -> None:
    """Every source split has the dataset's input and label columns.

    Raises:
        DataUnavailableError: a column is missing; the message names the expected and the found ones.
    """
    for split, ds in source.items():
        missing = [c for c in (spec.image_column, spec.label_column) if c not in ds.column_names]
        if missing:
            raise DataUnavailableError(
                f"the {split} split of '{spec.name}' has columns {ds.column_names}, expected {spec.image_column!r} "
                f"(input) and {spec.label_column!r} (label) as in {spec.hub_id or 'its schema'}: replace the files "
                f"with that dataset's")


def load_splits(name: str, params: dict[str, Any] | None = None, data_dir: Path | None = None,
                cache_dir: Path | None = None) -> DataSplits:
    """Load dataset ``name`` and carve its four splits.

    Args:
        name: a registered dataset name or alias.
        params: dataset parameters (defaults from the spec fill the rest).
        data_dir: a local mirror root, or None for the hub / bundled source.

    Raises:
        UnknownNameError: ``name`` is not registered.
        DataUnavailableError: the data cannot be reached.
    """
    spec = DATASETS.get(name)
    params = {**spec.default_parameters(), **(params or {})}
    source, fingerprint = load_source(spec, data_dir, cache_dir, params)
    if spec.generic:
        spec = read_schema(spec, source, params)
    check_schema(spec, source)
    n_test = len(source["test"]) if "test" in source else None
    n_validation = len(source["validation"]) if "validation" in source else None
    indices = make_splits(len(source["train"]), n_test, params, n_validation)
    if float(params.get("train_fraction", 1.0)) < 1.0:
        labels = np.asarray(source[indices["train"][0]][spec.label_column])
        indices = subsample_train(indices, labels, float(params["train_fraction"]), int(params["split_seed"]))
    return DataSplits(spec, source, indices, fingerprint, params)


def read_schema(spec: DatasetSpec, source: datasets.DatasetDict, params: dict[str, Any]) -> DatasetSpec:
    """The spec of a generic dataset with its columns and C read from the data: the input is the
    first ``Image`` feature, the label the first ``ClassLabel`` (``dataset.image_column`` /
    ``dataset.label_column`` choose others), C the number of the ``ClassLabel``'s names.

    Raises:
        DataUnavailableError: no ``Image`` or no ``ClassLabel`` column (or the named one is not one).
    """
    features = source["train"].features

    def pick(kind: type, key: str) -> str:
        named = params.get(key)
        found = [c for c, f in features.items() if isinstance(f, kind)]
        if named is not None:
            if not isinstance(features.get(named), kind):
                raise DataUnavailableError(
                    f"dataset.{key}={named!r}: '{spec.name}' has no {kind.__name__} column of that name; its "
                    f"{kind.__name__} columns: {found or 'none'} (all: {list(features)})")
            return named
        if not found:
            columns = {c: type(f).__name__ for c, f in features.items()}
            raise DataUnavailableError(
                f"'{spec.name}' has no {kind.__name__} column (columns: {columns}): an image-classification "
                f"dataset needs one; cast the column to {kind.__name__} in the files (datasets' cast_column), "
                f"then name it with --set dataset.{key}=COLUMN")
        return found[0]

    image, label = pick(datasets.Image, "image_column"), pick(datasets.ClassLabel, "label_column")
    return dataclasses.replace(spec, image_column=image, label_column=label,
                               num_classes=len(features[label].names))


@dataclass(frozen=True)
class ImageInfo:
    """What a backbone must know of a dataset's images, read from the first train image.

    Attributes:
        channels: 1 for greyscale (PIL modes L, 1, I, F), 3 otherwise.
        height, width: pixels.
    """

    channels: int
    height: int
    width: int


def image_info(splits: DataSplits) -> ImageInfo:
    """:class:`ImageInfo` of ``splits``' first train image."""
    src, idx = splits.indices["train"]
    image = splits.source[src][int(idx[0])][splits.spec.image_column]
    return ImageInfo(1 if image.mode in ("L", "1", "I", "I;16", "F") else 3, image.height, image.width)


