"""SVHN (``ufldl-stanford/svhn``, config ``cropped_digits``): train and test, and the 531k-image
``extra`` split joined to train with ``--set dataset.extra=true``. From the hub only the needed
parquet files are fetched; a local mirror is ``DIR/svhn/{train,test[,extra]}.parquet``."""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import datasets

from eebench.data.spec import DATASETS, DatasetSpec, register_dataset
from eebench.data.sources import dict_fingerprint, file_sha256, hub_error, load_mirror, offline
from eebench.errors import DataUnavailableError

log = logging.getLogger(__name__)


def build_svhn(data_dir: Path | None = None, cache_dir: Path | None = None,
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
        ds, fingerprint = load_mirror(spec, Path(data_dir))
        if extra:
            path = Path(data_dir) / spec.name / "extra.parquet"
            if not path.is_file():
                raise DataUnavailableError(f"dataset.extra=true but {path} is missing: put the hub's extra split "
                                           f"there or drop --set dataset.extra")
            part = datasets.load_dataset("parquet", data_files={"train": str(path)})["train"]
            ds["train"] = datasets.concatenate_datasets([ds["train"], part.cast(ds["train"].features)])
            fingerprint = hashlib.sha256(f"{fingerprint}:extra:{file_sha256(path)}".encode()).hexdigest()[:16]
        return ds, fingerprint
    wanted = ["train", "test", *(["extra"] if extra else [])]
    try:
        try:
            ds = datasets.load_dataset(spec.hub_id, spec.hub_config,
                                       data_files={s: f"{spec.hub_config}/{s}-*.parquet" for s in wanted})
        except Exception as e:  # a changed file layout on the hub: fetch the whole config instead
            if offline():
                raise
            log.info("svhn: split-wise download failed (%s); loading the whole config", type(e).__name__)
            ds = datasets.load_dataset(spec.hub_id, spec.hub_config)
    except Exception as e:
        raise hub_error(spec, e, f"DIR/{spec.name}/{{train,test}}.parquet") from e
    ds = datasets.DatasetDict({s: ds[s] for s in wanted})
    if extra:
        ds = datasets.DatasetDict({"train": datasets.concatenate_datasets([ds["train"], ds["extra"]]),
                                   "test": ds["test"]})
    return ds, dict_fingerprint(ds)


register_dataset(DatasetSpec(
    name="svhn", hub_id="ufldl-stanford/svhn", hub_config="cropped_digits", num_classes=10,
    default_backbone="t2t_vit_7", builder=build_svhn, hflip_invariant=False, parameters={"extra": False},
    description="SVHN cropped digits, 73k/26k 32x32 colour images (extra split: --set dataset.extra=true)"))
