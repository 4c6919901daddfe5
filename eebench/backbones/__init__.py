"""Backbones: timm-registered models plus their exit adapters, one module per model family, each
registering its backbones (:func:`register_backbone`) beside its model code; every module of this
package is imported the first time a backbone name is looked up. Where the weights of a run come
from is :mod:`eebench.backbones.weights`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import timm
from torch import nn

from eebench.backbones.base import ExitAdapter
from eebench.data.sources import offline
from eebench.errors import ConfigError, DataUnavailableError
from eebench.data.pipelines import ImagePipeline, InputPipeline
from eebench.registry import Registry

log = logging.getLogger(__name__)


#: Where weights that ship with the package live.
SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"


@dataclass(frozen=True)
class ShippedWeights:
    """Weights that ship with eebench for one (dataset, splits, recipe): what ``eebench backbone train``
    gave on the machine that made the committed results, so that the offline default needs no training
    and gives the same numbers on every CPU (training depends on the CPU's kernels).

    Attributes:
        file: the file name under :data:`SHIPPED_DIR` (safetensors, written by ``backbone train``).
        sha256: sha256 of the file's bytes, hex (checked before every load).
        split_key: :meth:`~eebench.data.splits.DataSplits.key` of the splits they were trained on.
        recipe_key: :func:`~eebench.backbones.training.recipe_key` of the recipe they were trained with.
        made_by: the command that trains them again, for the run record.
    """

    file: str
    sha256: str
    split_key: str
    recipe_key: str
    made_by: str

    @property
    def path(self) -> Path:
        return SHIPPED_DIR / self.file


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone.

    Attributes:
        name: the timm model name (``timm.create_model(name)``) and ``--backbone`` value.
        adapter: model → :class:`ExitAdapter` (exits and IM design).
        description: one line for ``eebench list``.
        weights_file: local file name of the published checkpoint (under ``--weights-dir``).
        pretrained_on: the dataset the published checkpoint was trained on.
        recipe: training recipe for :mod:`eebench.backbones.training` (overrides of its defaults).
        train_on_first_use: train here without being asked when no checkpoint exists.
        pipeline: how dataset rows become inputs (images by default).
        dataset_recipes: per-dataset recipe overrides on top of ``recipe`` (e.g. the resolution
            and optimiser for a dataset the backbone is trained on from scratch).
        model_name: the timm model name, where it differs from ``name`` (``timm:NAME`` backbones).
        generic: a ``timm:NAME`` backbone (:mod:`eebench.backbones.timm_generic`): its adapter takes
            ``exits``, and its recipe is read from the data.
        recipe_for: ``(ImageInfo, hflip_invariant) -> recipe`` overrides read from the data (image
            size and channels), between ``recipe`` and ``dataset_recipes``.
        shipped: per dataset, the trained weights that ship with eebench (:class:`ShippedWeights`),
            used in place of training for the splits and recipe they were made with.
        trained_by_default: datasets whose ``weights: auto`` is the checkpoint trained here (by its
            ``dataset_recipes`` entry, e.g. a fine-tune of the published weights) even though the
            published checkpoint was trained on them.
    """

    name: str
    adapter: Callable[[nn.Module], ExitAdapter]
    description: str
    weights_file: str | None = None
    pretrained_on: str | None = None
    recipe: dict[str, Any] = field(default_factory=dict)
    train_on_first_use: bool = False
    pipeline: InputPipeline = field(default_factory=ImagePipeline)
    dataset_recipes: dict[str, dict[str, Any]] = field(default_factory=dict)
    model_name: str | None = None
    generic: bool = False
    recipe_for: Callable[[Any, bool | None], dict[str, Any]] | None = None
    shipped: dict[str, ShippedWeights] = field(default_factory=dict)
    trained_by_default: tuple[str, ...] = ()

    @property
    def timm_name(self) -> str:
        """The name ``timm.create_model`` knows."""
        return self.model_name or self.name


#: Every backbone; the family modules of this package register theirs on first use.
BACKBONES: Registry[BackboneSpec] = Registry("backbone", package="eebench.backbones")


def register_backbone(spec: BackboneSpec, aliases: tuple[str, ...] = ()) -> BackboneSpec:
    return BACKBONES.register(spec.name, spec, aliases)


def weights_sources(spec: BackboneSpec) -> str:
    """Where a backbone's weights can come from, read from its spec."""
    out = []
    if spec.pretrained_on:
        out.append(f"published {spec.pretrained_on} checkpoint {spec.weights_file}")
    for dataset, shipped in spec.shipped.items():
        out.append(f"shipped for {dataset} ({shipped.file})")
    out.append("trained here on first use" if spec.train_on_first_use else "trained here by `eebench backbone train`")
    return "; ".join(out)


def describe_backbone(name: str) -> str:
    """One line for ``eebench list``: the model family, exits and IM design read off a freshly built
    adapter (random weights, the model's default input), and where its weights come from."""
    spec = BACKBONES.get(name)
    adapter = spec.adapter(timm.create_model(spec.timm_name, num_classes=10))
    return f"{spec.description}; {adapter.num_blocks} exits: {adapter.exits_doc}; weights: {weights_sources(spec)}"


def create_model(name: str, num_classes: int, pretrained: bool = False, weights_dir: Path | None = None,
                 pretrained_cfg_overlay: dict[str, Any] | None = None, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` for a registered backbone.

    With ``pretrained``, loads the published checkpoint from ``weights_dir`` (same file name) or,
    without one, from its URL (cached by timm / torch hub). ``pretrained_cfg_overlay`` changes the
    model's data config (e.g. ``input_size``, ``crop_pct``, ``mean``; timm builds the model for
    that input size); other keyword arguments go to the model (e.g. ``drop_path_rate``).

    Raises:
        DataUnavailableError: the file is not in ``weights_dir``, or the URL cannot be reached.
    """
    spec = BACKBONES.get(name)
    overlay = dict(pretrained_cfg_overlay or {})
    try:
        if not pretrained:
            return timm.create_model(spec.timm_name, num_classes=num_classes, pretrained_cfg_overlay=overlay or None,
                                     **kwargs)
    except TypeError as e:  # a model keyword (backbone.KEY) the model does not take
        raise ConfigError(f"{spec.name} does not take the model options {sorted(kwargs)}: {e}; drop the "
                          f"--set backbone.KEY that caused it") from None
    if weights_dir is not None:
        path = Path(weights_dir) / spec.weights_file
        if not path.is_file():
            raise DataUnavailableError(
                f"weights file {spec.weights_file} is not in {weights_dir}: put the published checkpoint there "
                f"or drop --weights-dir / EEBENCH_WEIGHTS_DIR to download it")
        overlay["file"] = str(path)
    elif offline() and _from_hub(spec.timm_name):   # the hub client reads HF_HUB_OFFLINE once, at import
        raise DataUnavailableError(f"cannot download the {spec.timm_name} weights: HF_HUB_OFFLINE is set; pass "
                                   f"--weights-dir DIR with {spec.weights_file} in it, or unset HF_HUB_OFFLINE")
    try:
        return timm.create_model(spec.timm_name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except (OSError, RuntimeError) as e:
        if "file" in overlay:
            raise DataUnavailableError(f"cannot load {overlay['file']}: {type(e).__name__}: {e}; "
                                       f"replace it with the published file") from e
        raise DataUnavailableError(
            f"cannot download the {spec.timm_name} weights ({type(e).__name__}); pass --weights-dir DIR "
            f"with {spec.weights_file} in it") from e


def _from_hub(model_name: str) -> bool:
    cfg = timm.models.get_pretrained_cfg(model_name)
    return bool(cfg is not None and cfg.hf_hub_id)


def default_weights(name: str, dataset: str) -> str:
    """``weights: auto`` → "published" when the backbone's published checkpoint was trained on
    ``dataset`` (unless the backbone trains its own there by default, ``trained_by_default``), else
    "trained" (a checkpoint trained here by ``eebench backbone train``)."""
    spec = BACKBONES.get(name)
    return "published" if spec.pretrained_on == dataset and dataset not in spec.trained_by_default else "trained"
