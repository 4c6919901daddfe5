"""Datasets named rather than registered: any Hugging Face image-classification dataset by id
(``--dataset hf:OWNER/NAME[:CONFIG]``) and any local folder (``--dataset PATH``).

The input column is the first ``Image`` feature and the label the first ``ClassLabel``
(``--set dataset.image_column=...`` / ``label_column=...`` choose others); C is the number of the
``ClassLabel``'s names (:func:`eebench.data.splits.read_schema`). The source's ``train``, ``validation``
(also named ``valid`` or ``val``) and ``test`` splits are kept; a validation split gives val and
calib (:func:`eebench.data.splits.make_splits`), and a test split whose labels are all −1 (the hub's mark of
an unlabelled split) is dropped, so that test is carved from train.

Sources: the hub by id; offline, a mirror ``--data-dir DIR`` holding
``DIR/OWNER/NAME[/CONFIG]/{train,validation,test}.parquet``; a folder holding those parquet files,
or an ImageFolder tree ``PATH/{train,validation,test}/<class>/<image>``.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from eebench.data.spec import DATASETS, DatasetSpec
from eebench.data.sources import dict_fingerprint, hub_error, load_mirror
from eebench.errors import DataUnavailableError, UsageError

log = logging.getLogger(__name__)

#: Parameters of every generic dataset, on top of the split parameters (None: read from the data).
GENERIC_PARAMETERS: dict[str, Any] = {"image_column": None, "label_column": None}
#: The backbone of a generic dataset when ``--backbone`` is not given.
GENERIC_BACKBONE = "timm:resnet18"
_SPLIT_NAMES = {"train": "train", "validation": "validation", "valid": "validation", "val": "validation",
                "test": "test"}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def keep_splits(ds: datasets.DatasetDict, name: str) -> datasets.DatasetDict:
    """The ``train``, ``validation`` and ``test`` splits of a source under those names; an
    unlabelled test split (every label −1) is dropped.

    Raises:
        DataUnavailableError: no train split.
    """
    out: dict[str, datasets.Dataset] = {}
    for split, part in ds.items():
        key = _SPLIT_NAMES.get(split)
        if key is not None and key not in out:
            out[key] = part
    if "train" not in out:
        raise DataUnavailableError(f"'{name}' has splits {sorted(ds)}; it needs a train split")
    test = out.get("test")
    if test is not None:
        label = next((c for c, f in test.features.items() if isinstance(f, datasets.ClassLabel)), None)
        if label is not None and (len(test) == 0 or int(np.max(test.with_format("numpy")[label])) < 0):
            log.info("%s: the test split has no labels (all -1): test is carved from train", name)
            del out["test"]
    return datasets.DatasetDict(out)


def follow_link_file(path: Path) -> Path:
    """``path``, or the folder it names when it is a symbolic link checked out as a plain file (git
    with ``core.symlinks=false`` writes the link's target path into a small file)."""
    if path.is_file() and path.stat().st_size < 1024:
        target = (path.parent / path.read_text().strip()).resolve()
        if target.is_dir():
            log.info("%s is a link written as a file: reading %s", path, target)
            return target
    return path


def _mirror_splits(spec: DatasetSpec, folder: Path) -> tuple[datasets.DatasetDict, str]:
    ds, fingerprint = load_mirror(spec, None, folder=folder, splits=("train", "validation", "test"))
    return keep_splits(ds, spec.name), fingerprint


def hub_spec(name: str) -> DatasetSpec:
    """The spec of ``hf:OWNER/NAME[:CONFIG]``.

    Raises:
        UsageError: the id is not of that form.
    """
    body = name[len("hf:"):]
    hub_id, _, config = body.partition(":")
    if not _HUB_ID.fullmatch(hub_id):
        raise UsageError(f"dataset '{name}': a hub dataset is named hf:OWNER/NAME or hf:OWNER/NAME:CONFIG "
                         f"(e.g. hf:ylecun/mnist)")

    def build(data_dir: Path | None = None, cache_dir: Path | None = None,
              params: dict[str, Any] | None = None) -> tuple[datasets.DatasetDict, str]:
        if data_dir is not None:
            folder = follow_link_file(Path(data_dir) / hub_id)
            folder = follow_link_file(folder / config) if config else folder
            if not folder.is_dir():
                raise DataUnavailableError(
                    f"no local mirror of '{name}' at {folder}: put the hub's parquet files there "
                    f"(train.parquet, and validation.parquet / test.parquet where the hub has them), or drop "
                    f"--data-dir / EEBENCH_DATA_DIR to load {hub_id} from the hub")
            return _mirror_splits(spec, folder)
        try:
            ds = datasets.load_dataset(hub_id, config or None)
        except Exception as e:
            layout = f"DIR/{hub_id}{'/' + config if config else ''}/{{train,validation,test}}.parquet"
            raise hub_error(spec, e, layout) from e
        ds = keep_splits(ds, name)
        return ds, dict_fingerprint(ds)

    spec = DatasetSpec(name=name, hub_id=hub_id, hub_config=config or None, num_classes=0,
                       default_backbone=GENERIC_BACKBONE, description=f"hub dataset {hub_id}", builder=build,
                       parameters=dict(GENERIC_PARAMETERS), generic=True)
    return spec


def folder_fingerprint(folder: Path) -> str:
    """A key of an image folder's files: relative path, size and modification time of each."""
    h = hashlib.sha256()
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for f in sorted(files):
            p = Path(root) / f
            st = p.stat()
            h.update(f"{p.relative_to(folder)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def folder_spec(path: str) -> DatasetSpec:
    """The spec of a local folder: ``train.parquet`` (and ``validation`` / ``test``) in a hub schema,
    or an ImageFolder tree ``train/<class>/<image>`` (and ``validation/``, ``test/``)."""
    folder = Path(path)

    def build(data_dir: Path | None = None, cache_dir: Path | None = None,
              params: dict[str, Any] | None = None) -> tuple[datasets.DatasetDict, str]:
        if (folder / "train.parquet").is_file():
            return _mirror_splits(spec, folder)
        if not (folder / "train").is_dir():
            raise DataUnavailableError(
                f"folder {folder} has neither train.parquet nor train/<class>/ images: lay it out as "
                f"train.parquet [validation.parquet] [test.parquet] in a hub schema, or as an ImageFolder tree "
                f"train/<class>/<image> [test/<class>/<image>]")
        try:
            ds = datasets.load_dataset("imagefolder", data_dir=str(folder))
        except Exception as e:
            raise DataUnavailableError(f"cannot read the image folders in {folder} ({type(e).__name__}: "
                                       f"{str(e).splitlines()[0] if str(e) else ''})") from e
        return keep_splits(ds, spec.name), folder_fingerprint(folder)

    spec = DatasetSpec(name=path, hub_id=None, num_classes=0, default_backbone=GENERIC_BACKBONE,
                       description=f"local folder {path}", builder=build, parameters=dict(GENERIC_PARAMETERS),
                       generic=True)
    return spec


def resolve(name: str) -> tuple[str, DatasetSpec] | None:
    """The registry's resolver for ``hf:`` ids and folders (see the module docstring).

    Raises:
        UsageError: a malformed ``hf:`` id; an ``OWNER/NAME`` that is no folder here (it says to
            write ``hf:OWNER/NAME``); a path to a folder that does not exist.
    """
    if name.startswith("hf:"):
        return name, hub_spec(name)
    looks_like_path = os.sep in name or name.startswith((".", "~"))
    if not looks_like_path:
        return None
    path = Path(name).expanduser()
    if path.is_dir():
        canonical = os.path.normpath(str(path))
        return canonical, folder_spec(canonical)
    if _HUB_ID.fullmatch(name):
        raise UsageError(f"unknown dataset '{name}': for the hub dataset write hf:{name}; "
                         f"no folder {name} exists here either")
    raise DataUnavailableError(f"dataset folder {name} does not exist: give the path of a folder with train.parquet "
                               f"or train/<class>/ images")


DATASETS.add_resolver(resolve, "hf:OWNER/NAME[:CONFIG] or a folder PATH")
