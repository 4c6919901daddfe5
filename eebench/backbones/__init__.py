"""Backbones: timm-registered models plus their exit adapters, and where their weights come from.

A backbone's weights for a dataset come from, in order:

1. its published checkpoint, when the dataset is the one it was published for (``pretrained_on``):
   from the public URL through timm, or from ``--weights-dir`` / ``$EEBENCH_WEIGHTS_DIR`` holding
   the same file name, through the model's checkpoint filter;
2. a checkpoint trained here by ``eebench backbone train`` for (backbone, dataset, splits);
3. for backbones marked ``train_on_first_use`` (the digits ViT), training right away.
"""
from __future__ import annotations

import json
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
        dataset_recipes: per-dataset recipe overrides on top of ``recipe`` (e.g. the resolution
            and optimiser for a dataset the backbone is trained on from scratch).
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


BACKBONES: Registry[BackboneSpec] = Registry("backbone")


def register_backbone(spec: BackboneSpec, aliases: tuple[str, ...] = ()) -> BackboneSpec:
    return BACKBONES.register(spec.name, spec, aliases)


for _depth in (20, 56):
    register_backbone(BackboneSpec(
        name=f"cifar_resnet{_depth}", adapter=cifar_resnet.CifarResNetExits,
        description=f"CIFAR ResNet-{_depth} (option A)",
        weights_file=cifar_resnet.WEIGHT_FILES[f"cifar_resnet{_depth}"], pretrained_on="cifar10",
        recipe={"epochs": 30, "lr": 0.1, "weight_decay": 1e-4, "batch_size": 128, "augment": "crop_flip"}),
        aliases=(f"resnet{_depth}",))
register_backbone(BackboneSpec(
    name="vit_digits", adapter=vit.ViTExits, train_on_first_use=True,
    description="ViT depth 6, width 64 on 8x8 digits",
    recipe={"optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.05, "epochs": 100, "batch_size": 64,
            "augment": "none", "num_workers": 0, "num_threads": 1}))

# GRIT-style graph transformer on MNIST superpixel graphs (eebench/backbones/grit.py, eebench/graphs.py):
# trained here from scratch; AdamW as GRIT's MNIST recipe (which runs 200 epochs on a GPU; fewer here).
from eebench.backbones import grit as _grit  # noqa: E402

register_backbone(BackboneSpec(
    name="grit", adapter=_grit.GritExits, pipeline=_grit.GraphPipeline(),
    description="GRIT-style graph transformer (RRWP-conditioned attention, 6 blocks, width 64) on superpixel graphs",
    recipe={"optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.01, "epochs": 15, "batch_size": 128,
            "warmup_epochs": 1, "augment": "none", "num_workers": 1}),
    aliases=("grit_mnist",))


# T2T-ViT-7/14 (eebench/backbones/t2t_vit.py): published ImageNet weights; on the paper's other datasets
# they are fine-tuned here as JEI-DNN did (the official transfer recipe: SGD, lr 0.05 for the classifier
# and 0.01x for the rest, 224 px, cosine over 60 epochs, stochastic depth 0.1); on MNIST trained from
# scratch at 28 px (the resolution is argued in eebench/backbones/t2t_vit.py).
from eebench.backbones import t2t_vit  # noqa: E402

_T2T_RECIPE = {"init": "pretrained", "optimizer": "sgd", "lr": 0.05, "backbone_lr_ratio": 0.01, "momentum": 0.9,
               "weight_decay": 5e-4, "epochs": 60, "batch_size": 64, "augment": "crop_flip", "drop_path_rate": 0.1,
               "input_cfg": {"crop_pct": 1.0}}
_T2T_DATASET_RECIPES = {
    "svhn": {"augment": "crop"},  # digits: no flips
    "mnist": {"init": "scratch", "optimizer": "adamw", "lr": 1e-3, "backbone_lr_ratio": 1.0, "weight_decay": 0.05,
              "epochs": 20, "warmup_epochs": 1, "batch_size": 64, "augment": "crop", "drop_path_rate": 0.0,
              "input_cfg": {"input_size": [1, 28, 28], "crop_pct": 1.0, "interpolation": "bilinear",
                            "mean": [0.1307], "std": [0.3081]}},
}
for _name, _width, _depth in (("t2t_vit_7", 256, 7), ("t2t_vit_14", 384, 14)):
    register_backbone(BackboneSpec(
        name=_name, adapter=t2t_vit.T2TViTExits, weights_file=t2t_vit.WEIGHT_FILES[_name], pretrained_on="imagenet",
        description=f"T2T-ViT-{_depth} (Performer T2T, width {_width})",
        recipe=_T2T_RECIPE, dataset_recipes=_T2T_DATASET_RECIPES), aliases=(_name.replace("_", "-"),))


def weights_sources(spec: BackboneSpec) -> str:
    """Where a backbone's weights can come from, read from its spec."""
    out = []
    if spec.pretrained_on:
        out.append(f"published {spec.pretrained_on} checkpoint {spec.weights_file}")
    out.append("trained here on first use" if spec.train_on_first_use else "trained here by `eebench backbone train`")
    return "; ".join(out)


def describe_backbone(name: str) -> str:
    """One line for ``eebench list``: the model family, exits and IM design read off a freshly built
    adapter (random weights, the model's default input), and where its weights come from."""
    spec = BACKBONES.get(name)
    adapter = spec.adapter(timm.create_model(spec.name, num_classes=10))
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
    if not pretrained:
        return timm.create_model(spec.name, num_classes=num_classes, pretrained_cfg_overlay=overlay or None, **kwargs)
    if weights_dir is not None:
        path = Path(weights_dir) / spec.weights_file
        if not path.is_file():
            raise DataUnavailableError(
                f"weights file {spec.weights_file} is not in {weights_dir}: put the published checkpoint there "
                f"or drop --weights-dir / EEBENCH_WEIGHTS_DIR to download it")
        overlay["file"] = str(path)
    try:
        return timm.create_model(spec.name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except (OSError, RuntimeError) as e:
        if "file" in overlay:
            raise DataUnavailableError(f"cannot load {overlay['file']}: {type(e).__name__}: {e}; "
                                       f"replace it with the published file") from e
        raise DataUnavailableError(
            f"cannot download the {spec.name} weights ({type(e).__name__}); pass --weights-dir DIR "
            f"with {spec.weights_file} in it") from e


def default_weights(name: str, dataset: str) -> str:
    """``weights: auto`` → "published" when the backbone's published checkpoint was trained on
    ``dataset``, else "trained" (a checkpoint trained here by ``eebench backbone train``)."""
    return "published" if BACKBONES.get(name).pretrained_on == dataset else "trained"


def load_backbone(name: str, splits: Any, weights_dir: Path | None, cache_dir: Path,
                  weights: str = "auto", recipe: dict[str, Any] | None = None) -> tuple[nn.Module, str]:
    """The frozen backbone for a dataset, in eval mode.

    Args:
        name: backbone name or alias.
        splits: the dataset's :class:`~eebench.data.DataSplits` (a trained checkpoint belongs to
            one dataset and split).
        weights: "published" (the published checkpoint, only for the dataset it was trained on),
            "trained" (trained here for this dataset and split), or "auto" (:func:`default_weights`).
            It is part of the run config, so a run id always names the same weights.
        recipe: for "trained", the training recipe (default: the backbone's for the dataset); part
            of the run config too, and of the checkpoint's folder, so another recipe is another
            checkpoint and another run id.

    Returns:
        ``(model, source)``: the timm model and a description of where its weights came from.

    Raises:
        UsageError: the weights asked for do not exist (no published checkpoint for this dataset,
            or nothing trained yet and the backbone is not trained on first use); the message
            gives the command that trains them.
        DataUnavailableError: see :func:`create_model`.
    """
    from eebench import backbone_training

    spec = BACKBONES.get(name)
    dataset = splits.spec.name
    if weights == "auto":
        weights = default_weights(spec.name, dataset)
    if weights == "published":
        if spec.pretrained_on != dataset:
            raise UsageError(f"{spec.name} has no published weights for {dataset} (only for {spec.pretrained_on}); "
                             f"use --set weights=trained after `eebench backbone train --backbone {spec.name} "
                             f"--dataset {dataset}`")
        model = create_model(spec.name, splits.spec.num_classes, pretrained=True, weights_dir=weights_dir)
        return model.eval(), f"published {spec.pretrained_on} checkpoint {spec.weights_file}"
    if weights != "trained":
        raise UsageError(f"weights={weights!r}: must be auto, published or trained")
    default = backbone_training.default_recipe(spec.name, dataset)
    recipe = {**default, **(recipe or {})}
    ckpt = backbone_training.checkpoint_path(cache_dir, spec.name, splits, recipe)
    if not ckpt.exists():
        changed = " ".join(f"--set {k}={json.dumps(v)}" for k, v in sorted(recipe.items()) if default.get(k) != v)
        if not spec.train_on_first_use:
            others = [" ".join(f"--set recipe.{k}={json.dumps(v)}" for k, v in sorted(r.items()) if default.get(k) != v)
                      or "the default recipe" for r in backbone_training.trained_recipes(cache_dir, spec.name, splits)]
            hint = f"; trained here with: {others[0]}" if others else ""
            raise UsageError(
                f"no {spec.name} weights trained for {dataset} with this recipe (split {splits.key()}, recipe "
                f"{backbone_training.recipe_key(recipe)}): train them with `eebench backbone train --backbone "
                f"{spec.name} --dataset {dataset}{' ' + changed if changed else ''}` (same --set dataset.* options), "
                f"or run with the recipe weights were trained with{hint}")
        log.info("backbone: training %s on %s (first use; cached for later runs)", spec.name, dataset)
        backbone_training.train_backbone(spec.name, splits, cache_dir, {k: v for k, v in recipe.items()
                                                                         if default.get(k) != v})
    model = backbone_training.load_trained(spec.name, splits, cache_dir, recipe)
    note = "" if backbone_training.is_complete(ckpt.parent) else " (partial schedule: see its meta.json)"
    return model.eval(), f"trained here: {ckpt}{note}"
