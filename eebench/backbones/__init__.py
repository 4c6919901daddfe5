"""Backbones: timm-registered models plus their exit adapters, and where their weights come from.

A backbone's weights for a dataset come from, in order:

1. its published checkpoint, when the dataset is the one it was published for (``pretrained_on``):
   from the public URL through timm, or from ``--weights-dir`` / ``$EEBENCH_WEIGHTS_DIR`` holding
   the same file name, through the model's checkpoint filter;
2. a checkpoint trained here by ``eebench backbone train`` for (backbone, dataset, splits);
3. for backbones marked ``train_on_first_use`` (the digits ViT), training right away.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import timm
import torch
from torch import nn

from eebench.backbones import cifar_resnet, vit  # noqa: F401  (registers the timm models)
from eebench.backbones.base import ExitAdapter
from eebench.errors import DataUnavailableError, UsageError
from eebench.pipelines import ImagePipeline, InputPipeline
from eebench.registry import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone.

    Attributes:
        name: the timm model name (``timm.create_model(name)``) and ``--backbone`` value.
        adapter: model → :class:`ExitAdapter` (exits and IM design).
        description: one line for ``eebench list``.
        weights_file: local file name of the published checkpoint (under ``--weights-dir``).
        pretrained_on: the dataset the published checkpoint was trained on.
        recipe: training recipe for :mod:`eebench.backbone_training` (overrides of its defaults).
        train_on_first_use: train here without being asked when no checkpoint exists.
        pipeline: how dataset rows become inputs (images by default).
    """

    name: str
    adapter: Callable[[nn.Module], ExitAdapter]
    description: str
    weights_file: str | None = None
    pretrained_on: str | None = None
    recipe: dict[str, Any] = field(default_factory=dict)
    train_on_first_use: bool = False
    pipeline: InputPipeline = field(default_factory=ImagePipeline)


BACKBONES: Registry[BackboneSpec] = Registry("backbone")


def register_backbone(spec: BackboneSpec, aliases: tuple[str, ...] = ()) -> BackboneSpec:
    return BACKBONES.register(spec.name, spec, aliases)


for _depth in (20, 56):
    register_backbone(BackboneSpec(
        name=f"cifar_resnet{_depth}", adapter=cifar_resnet.CifarResNetExits,
        description=f"CIFAR ResNet-{_depth} (option A), published CIFAR-10 weights; "
                    f"{3 * ((_depth - 2) // 6)} exits, IM = MLP on 4x4-pooled block output",
        weights_file=cifar_resnet.WEIGHT_FILES[f"cifar_resnet{_depth}"], pretrained_on="cifar10",
        recipe={"epochs": 30, "lr": 0.1, "weight_decay": 1e-4, "batch_size": 128, "augment": "crop_flip"}),
        aliases=(f"resnet{_depth}",))
register_backbone(BackboneSpec(
    name="vit_digits", adapter=vit.ViTExits, train_on_first_use=True,
    description="ViT depth 6, width 64 on 8x8 digits, trained here on first use; 6 exits, IM = Linear on normed CLS",
    recipe={"optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.05, "epochs": 60, "batch_size": 128,
            "augment": "none", "num_workers": 0}))


def create_model(name: str, num_classes: int, pretrained: bool = False, weights_dir: Path | None = None) -> nn.Module:
    """``timm.create_model`` for a registered backbone.

    With ``pretrained``, loads the published checkpoint from ``weights_dir`` (same file name) or,
    without one, from its URL (cached by timm / torch hub).

    Raises:
        DataUnavailableError: the file is not in ``weights_dir``, or the URL cannot be reached.
    """
    spec = BACKBONES.get(name)
    if not pretrained:
        return timm.create_model(spec.name, num_classes=num_classes)
    overlay = {}
    if weights_dir is not None:
        path = Path(weights_dir) / spec.weights_file
        if not path.is_file():
            raise DataUnavailableError(
                f"weights file {spec.weights_file} is not in {weights_dir}: put the published checkpoint there "
                f"or drop --weights-dir / EEBENCH_WEIGHTS_DIR to download it")
        overlay = {"file": str(path)}
    try:
        return timm.create_model(spec.name, pretrained=True, pretrained_cfg_overlay=overlay)
    except (OSError, RuntimeError) as e:
        if overlay:
            raise DataUnavailableError(f"cannot load {overlay['file']}: {type(e).__name__}: {e}; "
                                       f"replace it with the published file") from e
        raise DataUnavailableError(
            f"cannot download the {spec.name} weights ({type(e).__name__}); pass --weights-dir DIR "
            f"with {spec.weights_file} in it") from e


def load_backbone(name: str, splits: Any, weights_dir: Path | None, cache_dir: Path) -> tuple[nn.Module, str]:
    """The frozen backbone for a dataset, in eval mode.

    Args:
        name: backbone name or alias.
        splits: the dataset's :class:`~eebench.data.DataSplits` (a trained checkpoint belongs to
            one dataset and split).

    Returns:
        ``(model, source)``: the timm model and a description of where its weights came from.

    Raises:
        UsageError: no weights exist for this (backbone, dataset) and the backbone is not trained
            on first use; the message gives the command that trains them.
        DataUnavailableError: see :func:`create_model`.
    """
    from eebench import backbone_training

    spec = BACKBONES.get(name)
    dataset = splits.spec.name
    if spec.pretrained_on == dataset:
        model = create_model(spec.name, splits.spec.num_classes, pretrained=True, weights_dir=weights_dir)
        return model.eval(), f"published {spec.pretrained_on} checkpoint {spec.weights_file}"
    ckpt = backbone_training.checkpoint_path(cache_dir, spec.name, splits)
    if not ckpt.exists():
        if not spec.train_on_first_use:
            raise UsageError(
                f"no {spec.name} weights for {dataset} (split {splits.key()}): train them with "
                f"`eebench backbone train --backbone {spec.name} --dataset {dataset}` (same --set dataset.* "
                f"options), or pick another --backbone")
        log.info("backbone: training %s on %s (first use; cached for later runs)", spec.name, dataset)
        backbone_training.train_backbone(spec.name, splits, cache_dir)
    model = backbone_training.load_trained(spec.name, splits, cache_dir)
    return model.eval(), f"trained here: {ckpt}"
