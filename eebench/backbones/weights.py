"""Where a run's backbone weights come from (between :mod:`eebench.backbones`, which knows the
models, and :mod:`eebench.backbones.training`, which trains them).

A backbone's weights for a dataset come from, in order:

1. its published checkpoint, when the dataset is the one it was published for (``pretrained_on``):
   from the public URL through timm, or from ``--weights-dir`` / ``$EEBENCH_WEIGHTS_DIR`` holding
   the same file name, through the model's checkpoint filter;
2. weights that ship with eebench for (dataset, splits, recipe) (the digits ViT's default recipe:
   :class:`~eebench.backbones.ShippedWeights`), checked against their sha256;
3. a checkpoint trained here by ``eebench backbone train`` for (backbone, dataset, splits, recipe);
4. for backbones marked ``train_on_first_use`` (the digits ViT, another recipe), training right away.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from torch import nn

from eebench.backbones import training as backbone_training
from eebench.backbones import BACKBONES, BackboneSpec, ShippedWeights, create_model, default_weights
from eebench.errors import CorruptFileError, UsageError

log = logging.getLogger(__name__)


def load_backbone(name: str, splits: Any, weights_dir: Path | None, cache_dir: Path,
                  weights: str = "auto", recipe: dict[str, Any] | None = None) -> tuple[nn.Module, str]:
    """The frozen backbone for a dataset, in eval mode.

    Args:
        name: backbone name or alias.
        splits: the dataset's :class:`~eebench.data.splits.DataSplits` (a trained checkpoint belongs to
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
        CorruptFileError: shipped weights whose bytes do not match their sha256.
    """
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
    default = backbone_training.recipe_of(spec.name, splits)
    recipe = backbone_training.recipe_of(spec.name, splits, recipe)
    shipped = shipped_for(spec, splits, recipe)
    if shipped is not None:
        return load_shipped(spec, splits, recipe, shipped).eval(), \
            f"shipped with eebench: {shipped.file}, sha256 {shipped.sha256[:16]} ({shipped.made_by})"
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
    return model.eval(), f"trained here: {ckpt}{note}; recipe {backbone_training.describe_recipe(recipe)}"


def shipped_for(spec: BackboneSpec, splits: Any, recipe: dict[str, Any]) -> ShippedWeights | None:
    """The weights that ship with eebench for ``spec`` on these splits with this recipe, if any."""
    shipped = spec.shipped.get(splits.spec.name)
    if shipped is None or shipped.split_key != splits.key() or \
            shipped.recipe_key != backbone_training.recipe_key(recipe):
        return None
    return shipped


def load_shipped(spec: BackboneSpec, splits: Any, recipe: dict[str, Any], shipped: ShippedWeights) -> nn.Module:
    """The model of ``recipe`` with the shipped weights, after checking the file's sha256.

    Raises:
        CorruptFileError: the file is missing, or its bytes do not match the sha256 in the code.
    """
    from eebench.data.sources import file_sha256

    path = shipped.path
    actual = file_sha256(path) if path.is_file() else "missing"
    if actual != shipped.sha256:
        raise CorruptFileError(f"shipped weights {path} {'are missing' if actual == 'missing' else 'do not match their sha256'} "
                               f"(expected {shipped.sha256[:16]}, found {actual[:16]}): restore the file "
                               f"(git checkout -- {path.name} in {path.parent}, or reinstall eebench)")
    model = backbone_training.build_model(spec.name, splits.spec.num_classes, backbone_training.full_recipe(recipe))
    model.load_state_dict(load_file(str(path)))
    return model
