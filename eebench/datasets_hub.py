"""The image datasets of the JEI-DNN paper beyond CIFAR-10: CIFAR-100, SVHN, ImageNet, and the
long-tailed CIFAR-100-LT (with CIFAR-10-LT, the same code, checkable on the CIFAR-10 data here).

Each is read in the Hugging Face hub's schema, from the hub or from a local mirror
(``--data-dir DIR``):

========== =============================== ============================ ==========================
name       hub id (config)                 columns                      local mirror
========== =============================== ============================ ==========================
cifar100   ``uoft-cs/cifar100``            img, fine_label, coarse_label DIR/cifar100/{train,test}.parquet
svhn       ``ufldl-stanford/svhn``         image, label                 DIR/svhn/{train,test[,extra]}.parquet
           (``cropped_digits``)
imagenet   ``ILSVRC/imagenet-1k`` (gated)  image, label                 DIR/imagenet/{train,test}.parquet, or
                                                                        class subfolders DIR/imagenet/{train,val}/<wnid>/
cifar100-lt derived from cifar100          as cifar100                  (the cifar100 mirror)
cifar10-lt  derived from cifar10           img, label                   (the cifar10 mirror)
========== =============================== ============================ ==========================

SVHN's 531k-image ``extra`` split is left out unless ``--set dataset.extra=true`` (then it joins
``train``). ImageNet's labelled ``validation`` split is the harness's ``test`` source (the hub's
``test`` split has no labels); a local folder is read by the ``imagefolder`` builder, its class
index being the sorted folder (wnid) order, the same as the hub's.

Long tail (Cui et al., CVPR 2019; Cao et al., NeurIPS 2019 "LDAM"; the CIFAR-100-LT of JEI-DNN):
class i ∈ {0..C−1} keeps n_i = ⌊n_max · (1/ρ)^(i/(C−1))⌋ training images, ρ the imbalance factor
(``imbalance_factor``, 100) and n_max the per-class count of the balanced source split (its
smallest class count, so every n_i exists): 500 → 5 for CIFAR-100. The images kept are the first
n_i of a seeded permutation (``lt_seed``) of the class's rows, in source order afterwards. The
test split stays balanced, as in the long-tail literature; ``lt_test: true`` gives it the same
profile (n_max = its own per-class count, 100 → 1 on CIFAR-100), as the ``IMBALANCECIFAR100``
class of the JEI-DNN code does when it is built on the test split. ``val`` and ``calib`` are then
carved from the long-tailed train split as for every dataset, so they follow its profile.
A derived dataset is written once under ``<cache>/datasets/<name>-<key>/`` (``save_to_disk``,
atomically), the key hashing the source's content fingerprint and the long-tail parameters.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from filelock import FileLock

from eebench import paths
from eebench.params import NON_NEGATIVE, Constraint, Range
from eebench.data import DATASETS, DatasetSpec, _file_sha256, _load_mirror, load_source, register_dataset
from eebench.errors import ConfigError, DataUnavailableError

__all__ = ["long_tail_counts", "long_tail_indices", "long_tail", "LONG_TAIL_PARAMETERS"]

log = logging.getLogger(__name__)

#: Parameters of the long-tailed datasets (``--set dataset.KEY=VALUE``).
LONG_TAIL_PARAMETERS: dict[str, Any] = {
    "imbalance_factor": 100.0,  # ρ = n_max / n_min on train
    "lt_test": False,           # give the test split the same profile (JEI-DNN code) instead of keeping it balanced
    "lt_seed": 0,               # seed of the per-class permutation that picks the kept images
}
LONG_TAIL_CONSTRAINTS: dict[str, Constraint] = {"imbalance_factor": Range(1), "lt_seed": NON_NEGATIVE}
_LONG_TAIL_VERSION = 1


# --------------------------------------------------------------------------------------------
# hub access
def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")


def _hub_error(spec: DatasetSpec, e: Exception, layout: str, hint: str = "") -> DataUnavailableError:
    """The one-line error of a dataset the hub cannot serve (as :func:`eebench.data._load_hub`)."""
    why = "HF_HUB_OFFLINE is set" if _offline() else f"the hub did not serve it ({type(e).__name__})"
    return DataUnavailableError(
        f"cannot load '{spec.name}' from the Hugging Face hub ({spec.hub_id}): {why}; pass --data-dir DIR "
        f"with {layout} in the hub's schema" + (", or unset HF_HUB_OFFLINE to download it" if _offline() else hint))


def _fingerprint(ds: datasets.DatasetDict) -> str:
    return hashlib.sha256("".join(f"{s}:{d._fingerprint}" for s, d in sorted(ds.items())).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# CIFAR-100
CIFAR100 = register_dataset(DatasetSpec(
    name="cifar100", hub_id="uoft-cs/cifar100", num_classes=100, default_backbone="t2t_vit_14",
    image_column="img", label_column="fine_label",
    description="CIFAR-100, 50k/10k 32x32 colour images, 100 fine classes"), aliases=("cifar-100",))


# --------------------------------------------------------------------------------------------
# SVHN
def _build_svhn(data_dir: Path | None = None, cache_dir: Path | None = None,
                params: dict[str, Any] | None = None) -> tuple[datasets.DatasetDict, str]:
    """SVHN ``cropped_digits`` train and test, plus ``extra`` joined to train when ``params['extra']``.

    From the hub only the needed parquet files are fetched (``data_files`` restricted to the
    splits; the whole config as a fallback, keeping the same splits).

    Raises:
        DataUnavailableError: no mirror file, or the hub cannot serve the dataset.
    """
    spec = DATASETS.get("svhn")
    extra = bool((params or {}).get("extra", False))
    if data_dir is not None:
        ds, fingerprint = _load_mirror(spec, Path(data_dir))
        if extra:
            path = Path(data_dir) / spec.name / "extra.parquet"
            if not path.is_file():
                raise DataUnavailableError(f"dataset.extra=true but {path} is missing: put the hub's extra split "
                                           f"there or drop --set dataset.extra")
            part = datasets.load_dataset("parquet", data_files={"train": str(path)})["train"]
            ds["train"] = datasets.concatenate_datasets([ds["train"], part.cast(ds["train"].features)])
            fingerprint = hashlib.sha256(f"{fingerprint}:extra:{_file_sha256(path)}".encode()).hexdigest()[:16]
        return ds, fingerprint
    wanted = ["train", "test", *(["extra"] if extra else [])]
    try:
        try:
            ds = datasets.load_dataset(spec.hub_id, spec.hub_config,
                                       data_files={s: f"{spec.hub_config}/{s}-*.parquet" for s in wanted})
        except Exception as e:  # a changed file layout on the hub: fetch the whole config instead
            if _offline():
                raise
            log.info("svhn: split-wise download failed (%s); loading the whole config", type(e).__name__)
            ds = datasets.load_dataset(spec.hub_id, spec.hub_config)
    except Exception as e:
        raise _hub_error(spec, e, f"DIR/{spec.name}/{{train,test}}.parquet") from e
    ds = datasets.DatasetDict({s: ds[s] for s in wanted})
    if extra:
        ds = datasets.DatasetDict({"train": datasets.concatenate_datasets([ds["train"], ds["extra"]]),
                                   "test": ds["test"]})
    return ds, _fingerprint(ds)


SVHN = register_dataset(DatasetSpec(
    name="svhn", hub_id="ufldl-stanford/svhn", hub_config="cropped_digits", num_classes=10,
    default_backbone="t2t_vit_7", builder=_build_svhn, parameters={"extra": False},
    description="SVHN cropped digits, 73k/26k 32x32 colour images (extra split: --set dataset.extra=true)"))


# --------------------------------------------------------------------------------------------
# ImageNet
_IMAGENET_LAYOUT = ("DIR/imagenet/{train,test}.parquet (test = the labelled validation split) or class "
                    "subfolders DIR/imagenet/{train,val}/<wnid>/*.JPEG")


def _build_imagenet(data_dir: Path | None = None, cache_dir: Path | None = None) -> tuple[datasets.DatasetDict, str]:
    """ImageNet-1k train and validation (as ``test``) from a parquet mirror, a folder of class
    subfolders (``imagefolder`` builder), or the hub (gated: accept its terms and log in first).

    Raises:
        DataUnavailableError: no usable local copy, or the hub cannot serve the dataset.
    """
    spec = DATASETS.get("imagenet")
    if data_dir is not None:
        folder = Path(data_dir) / spec.name
        if (folder / "train.parquet").is_file():
            return _load_mirror(spec, Path(data_dir))
        if not (folder / "train").is_dir():
            raise DataUnavailableError(f"no local copy of 'imagenet' in {folder}: put {_IMAGENET_LAYOUT} there, "
                                       f"or drop --data-dir / EEBENCH_DATA_DIR to load it from the hub")
        try:
            ds = datasets.load_dataset("imagefolder", data_dir=str(folder))
        except Exception as e:
            raise DataUnavailableError(f"cannot read the image folders in {folder} ({type(e).__name__}: "
                                       f"{str(e).splitlines()[0] if str(e) else ''}); lay them out as "
                                       f"{_IMAGENET_LAYOUT}") from e
    else:
        try:
            ds = datasets.load_dataset(spec.hub_id)
        except Exception as e:
            raise _hub_error(spec, e, _IMAGENET_LAYOUT, hint=(
                "; the hub's copy is gated: accept its terms on huggingface.co and log in (`hf auth login`)")) from e
    held_out = next((s for s in ("validation", "val", "test") if s in ds), None)
    if "train" not in ds or held_out is None:
        raise DataUnavailableError(f"imagenet source has splits {sorted(ds)}; it needs train and validation "
                                   f"(lay a local copy out as {_IMAGENET_LAYOUT})")
    ds = datasets.DatasetDict({"train": ds["train"], "test": ds[held_out]})
    return ds, _fingerprint(ds)


IMAGENET = register_dataset(DatasetSpec(
    name="imagenet", hub_id="ILSVRC/imagenet-1k", num_classes=1000, default_backbone="t2t_vit_14",
    builder=_build_imagenet,
    description="ImageNet-1k, 1.28M/50k images (hub, gated; or a local folder of class subfolders)"),
    aliases=("imagenet-1k",))


# --------------------------------------------------------------------------------------------
# long tail
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
    n_max being the split's smallest class count."""
    labels = np.asarray(split[label_column])
    n_max = int(np.bincount(labels, minlength=num_classes).min())
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
        key = hashlib.sha256(json.dumps({"base": base, "source": fingerprint, **settings,
                                         "version": _LONG_TAIL_VERSION}, sort_keys=True).encode()).hexdigest()[:16]
        root = paths.cache_dir(cache_dir) / "datasets"
        root.mkdir(parents=True, exist_ok=True)
        folder = root / f"{name}-{key}"
        with FileLock(str(root / f".{name}-{key}.lock")):
            if not (folder / "dataset_dict.json").exists():
                factor, seed = float(params["imbalance_factor"]), int(params["lt_seed"])
                derived = {"train": long_tail(source["train"], spec.label_column, spec.num_classes, factor, seed)}
                if "test" in source:
                    derived["test"] = (long_tail(source["test"], spec.label_column, spec.num_classes, factor, seed)
                                       if params["lt_test"] else source["test"])
                tmp = Path(tempfile.mkdtemp(prefix=f".{name}-{key}.", dir=root))
                try:
                    datasets.DatasetDict(derived).save_to_disk(str(tmp / "data"))
                    os.rename(tmp / "data", folder)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
                log.info("%s: derived from %s (train %d rows) and cached in %s", name, base, len(derived["train"]),
                         folder)
        return datasets.load_from_disk(str(folder)), key

    return build


for _name, _base, _backbone in (("cifar100-lt", "cifar100", "t2t_vit_14"), ("cifar10-lt", "cifar10", "t2t_vit_7")):
    _spec = DATASETS.get(_base)
    register_dataset(DatasetSpec(
        name=_name, hub_id=None, num_classes=_spec.num_classes, default_backbone=_backbone,
        image_column=_spec.image_column, label_column=_spec.label_column,
        builder=_long_tail_builder(_name, _base), parameters=dict(LONG_TAIL_PARAMETERS),
        parameter_constraints=dict(LONG_TAIL_CONSTRAINTS),
        description=f"{_base} with a long-tailed train split (exponential profile, imbalance 100; "
                    f"derived from {_spec.hub_id})"))
