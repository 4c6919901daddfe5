"""ImageNet-1k (``ILSVRC/imagenet-1k``, gated on the hub): train and the labelled validation split
(as ``test``; the hub's ``test`` split has no labels), from a parquet mirror, a folder of class
subfolders read by the ``imagefolder`` builder (class index = sorted wnid order, as the hub's), or
the hub."""
from __future__ import annotations

from pathlib import Path

import datasets

from eebench.data.spec import DATASETS, DatasetSpec, register_dataset
from eebench.data.sources import dict_fingerprint, hub_error, load_mirror
from eebench.errors import DataUnavailableError


_IMAGENET_LAYOUT = ("DIR/imagenet/{train,test}.parquet (test = the labelled validation split) or class "
                    "subfolders DIR/imagenet/{train,val}/<wnid>/*.JPEG")


def build_imagenet(data_dir: Path | None = None, cache_dir: Path | None = None) -> tuple[datasets.DatasetDict, str]:
    """ImageNet-1k train and validation (as ``test``) from a parquet mirror, a folder of class
    subfolders (``imagefolder`` builder), or the hub (gated: accept its terms and log in first).

    Raises:
        DataUnavailableError: no usable local copy, or the hub cannot serve the dataset.
    """
    spec = DATASETS.get("imagenet")
    if data_dir is not None:
        folder = Path(data_dir) / spec.name
        if (folder / "train.parquet").is_file():
            return load_mirror(spec, Path(data_dir))
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
            raise hub_error(spec, e, _IMAGENET_LAYOUT, hint=(
                "; the hub's copy is gated: accept its terms on huggingface.co and log in (`hf auth login`)")) from e
    held_out = next((s for s in ("validation", "val", "test") if s in ds), None)
    if "train" not in ds or held_out is None:
        raise DataUnavailableError(f"imagenet source has splits {sorted(ds)}; it needs train and validation "
                                   f"(lay a local copy out as {_IMAGENET_LAYOUT})")
    ds = datasets.DatasetDict({"train": ds["train"], "test": ds[held_out]})
    return ds, dict_fingerprint(ds)


register_dataset(DatasetSpec(
    name="imagenet", hub_id="ILSVRC/imagenet-1k", num_classes=1000, default_backbone="t2t_vit_14",
    builder=build_imagenet, hflip_invariant=True,
    description="ImageNet-1k, 1.28M/50k images (hub, gated; or a local folder of class subfolders)"),
    aliases=("imagenet-1k",))
