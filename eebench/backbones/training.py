"""Training a registered backbone on a dataset: from scratch, or fine-tuning its published weights.

SGD with momentum (or AdamW where a recipe says so), a per-step cosine schedule after an optional
linear warm-up, standard augmentation (random crop with 1/8-side padding, plus horizontal flips
where a flip preserves the class), selection of the checkpoint on ``val`` — never on ``test``.
Fine-tuning can give the pretrained part a smaller learning rate than the new classifier
(``backbone_lr_ratio``, the transfer ratio of the T2T-ViT and JEI-DNN code). The input resolution
and normalisation of a (backbone, dataset) pair are the recipe's ``input_cfg`` (an overlay of the
model's timm data config), so a model trained at 28 px is rebuilt at 28 px when it is loaded.
Resumable: the state after every epoch is written atomically to ``last.pt`` and a new call
continues from it (a finished run is not repeated). The selected weights go to
``model.safetensors`` under ``<cache>/backbones/<backbone>/<dataset>-<split key>/``, with the
recipe and the history in ``meta.json``. Runs on the GPU when there is one.

The recipe of a run is :data:`RECIPE_DEFAULTS`, then the backbone's ``recipe``, then its
``dataset_recipes[dataset]``, then ``--set`` overrides (:func:`default_recipe`).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from filelock import FileLock

from eebench.data.splits import DataSplits
from eebench.errors import ConfigError, CorruptCacheError, NonFiniteLossError
from eebench.integrity import load_verified, save_hashed
from eebench.params import AT_LEAST_ONE, FRACTION, MOMENTUM, NON_NEGATIVE, POSITIVE, Constraint, OneOf, Optional
from eebench.paths import slug
from eebench.records import write_atomic, write_json

log = logging.getLogger(__name__)

#: Defaults of a training recipe; a backbone's ``recipe`` and ``--set`` override them.
RECIPE_DEFAULTS: dict[str, Any] = {
    "optimizer": "sgd",        # sgd | adamw
    "lr": 0.05,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "epochs": 30,
    "batch_size": 128,
    "augment": "crop_flip",    # crop_flip | crop | none
    "label_smoothing": 0.0,
    "init": "scratch",         # scratch | pretrained (fine-tune the published weights)
    "seed": 0,
    "num_workers": 1,
    "warmup_epochs": 0,        # linear warm-up of the learning rate before the cosine
    "backbone_lr_ratio": 1.0,  # learning rate of everything but the classifier, relative to lr
    "drop_path_rate": None,    # stochastic depth while training (None: the model's default)
    "input_cfg": {},           # overlay of the model's data config: input_size [C, H, W], crop_pct, mean, std, ...
    "num_threads": 0,          # CPU threads while training (0: torch's default); fixed, the weights are too
}
#: Recipe keys that only some backbones' recipes have (absent, not defaulted, so that the recipe
#: keys, and the run ids, of the others stay as they were): the model's constructor keywords
#: (``timm:NAME`` backbones: ``in_chans``, ``img_size``, ``patch_size``, ...; ``--set backbone.KEY``).
OPTIONAL_RECIPE_KEYS = ("model_kwargs",)
RECIPE_CONSTRAINTS: dict[str, Constraint] = {
    "optimizer": OneOf(("sgd", "adamw")), "lr": POSITIVE, "momentum": MOMENTUM, "weight_decay": NON_NEGATIVE,
    "epochs": AT_LEAST_ONE, "batch_size": AT_LEAST_ONE, "augment": OneOf(("crop_flip", "crop", "none")),
    "label_smoothing": FRACTION, "init": OneOf(("scratch", "pretrained")), "seed": NON_NEGATIVE,
    "num_workers": NON_NEGATIVE, "warmup_epochs": NON_NEGATIVE, "backbone_lr_ratio": NON_NEGATIVE,
    "drop_path_rate": Optional(FRACTION), "num_threads": NON_NEGATIVE}


def default_recipe(backbone: str, dataset: str, info: Any = None) -> dict[str, Any]:
    """The recipe of (backbone, dataset) before ``--set`` overrides: :data:`RECIPE_DEFAULTS`, the
    backbone's ``recipe``, what its ``recipe_for`` reads from the data (``timm:NAME`` backbones:
    ``info`` is the dataset's :class:`~eebench.data.splits.ImageInfo`), its ``dataset_recipes[dataset]``.

    Raises:
        ValueError: the backbone's recipe depends on the data and ``info`` is None.
    """
    from eebench.backbones import BACKBONES
    from eebench.data.spec import DATASETS

    spec = BACKBONES.get(backbone)
    from_data: dict[str, Any] = {}
    if spec.recipe_for is not None:
        if info is None:
            raise ValueError(f"the recipe of {spec.name} is read from the data: pass its ImageInfo")
        from_data = spec.recipe_for(info, DATASETS.get(dataset).hflip_invariant)
    return {**RECIPE_DEFAULTS, **spec.recipe, **from_data, **spec.dataset_recipes.get(dataset, {})}


def recipe_of(backbone: str, splits: DataSplits, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """:func:`default_recipe` for ``splits``' dataset (its images read where the recipe needs them),
    then ``overrides``; ``model_kwargs`` are merged key by key."""
    from eebench.backbones import BACKBONES
    from eebench.data.splits import image_info

    spec = BACKBONES.get(backbone)
    info = image_info(splits) if spec.recipe_for is not None else None
    recipe = default_recipe(spec.name, splits.spec.name, info)
    overrides = dict(overrides or {})
    if "model_kwargs" in overrides:
        overrides["model_kwargs"] = {**recipe.get("model_kwargs", {}), **overrides["model_kwargs"]}
    return {**recipe, **overrides}


def model_config(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe's ``input_cfg`` as a timm ``pretrained_cfg_overlay`` (lists become tuples)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in (recipe.get("input_cfg") or {}).items()}


def build_model(backbone: str, num_classes: int, recipe: dict[str, Any], weights_dir: Path | None = None,
                training: bool = False) -> nn.Module:
    """The model a recipe trains or has trained: published weights for ``init: pretrained`` (with a
    fresh classifier of ``num_classes``), the recipe's input config, stochastic depth when ``training``.

    Raises:
        ConfigError: an unknown ``init``.
        DataUnavailableError: the published weights cannot be reached.
    """
    from eebench.backbones import create_model

    kwargs: dict[str, Any] = {"pretrained_cfg_overlay": model_config(recipe) or None,
                              **(recipe.get("model_kwargs") or {})}
    if training and recipe.get("drop_path_rate") is not None:
        kwargs["drop_path_rate"] = float(recipe["drop_path_rate"])
    if training and recipe["init"] == "pretrained":
        model = create_model(backbone, num_classes, pretrained=True, weights_dir=weights_dir, **kwargs)
        if model.get_classifier().out_features != num_classes:
            model.reset_classifier(num_classes)
        return model
    if recipe["init"] not in ("scratch", "pretrained"):
        raise ConfigError(f"recipe init={recipe['init']!r}: must be scratch or pretrained")
    return create_model(backbone, num_classes, **kwargs)


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate multiplier at optimiser step ``step`` (0-based): linear warm-up from
    1/warmup_steps to 1 over ``warmup_steps``, then cosine from 1 to 0 over the remaining steps
    (SGDR without restarts, Loshchilov & Hutter 2017)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))


def full_recipe(recipe: dict[str, Any]) -> dict[str, Any]:
    """``recipe`` with every key of :data:`RECIPE_DEFAULTS` (the defaults fill what it lacks)."""
    return {**RECIPE_DEFAULTS, **recipe}


def describe_recipe(recipe: dict[str, Any]) -> str:
    """One line naming how weights were made: the start (scratch, or the published weights), the
    optimiser, learning rate, weight decay, epochs (warm-up), batch and augmentation, e.g.
    "fine-tune of the published weights, sgd lr 0.01 wd 0.0001, 10 epochs, batch 128, crop_flip"."""
    r = full_recipe(recipe)
    start = "fine-tune of the published weights" if r["init"] == "pretrained" else "from scratch"
    warm = f" ({r['warmup_epochs']} warm-up)" if r["warmup_epochs"] else ""
    return (f"{start}, {r['optimizer']} lr {r['lr']:g} wd {r['weight_decay']:g}, {r['epochs']} epochs{warm}, "
            f"batch {r['batch_size']}, {r['augment']}")


def recipe_key(recipe: dict[str, Any]) -> str:
    """A content hash of a full recipe: a trained checkpoint's identity beside (backbone, data)."""
    blob = json.dumps(full_recipe(recipe), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def checkpoint_dir(cache_dir: Path, backbone: str, splits: DataSplits, recipe: dict[str, Any]) -> Path:
    """``<cache>/backbones/<backbone>/<dataset>-<split key>-r<recipe key>``: one folder per recipe."""
    return Path(cache_dir) / "backbones" / slug(backbone) / f"{slug(splits.spec.name)}-{splits.key()}-r{recipe_key(recipe)}"


def checkpoint_path(cache_dir: Path, backbone: str, splits: DataSplits, recipe: dict[str, Any]) -> Path:
    """Where the selected weights of (backbone, dataset, splits, recipe) live once trained. A checkpoint
    trained before recipes named their folder (``<dataset>-<split key>``) is moved here the first time
    its recipe is asked for."""
    folder = checkpoint_dir(cache_dir, backbone, splits, recipe)
    legacy = Path(cache_dir) / "backbones" / slug(backbone) / f"{slug(splits.spec.name)}-{splits.key()}"
    if not folder.exists() and (legacy / "meta.json").exists():
        try:
            trained = json.loads((legacy / "meta.json").read_text())["recipe"]
        except (OSError, KeyError, ValueError):
            trained = None
        if trained is not None and full_recipe(trained) == full_recipe(recipe):
            log.info("backbone: %s moved to %s (its recipe's folder)", legacy, folder)
            os.replace(legacy, folder)
    return folder / "model.safetensors"


def trained_recipes(cache_dir: Path, backbone: str, splits: DataSplits) -> list[dict[str, Any]]:
    """The full recipes of the checkpoints trained here for (backbone, dataset, splits)."""
    out = []
    for meta in sorted((Path(cache_dir) / "backbones" / slug(backbone)).glob(f"{slug(splits.spec.name)}-{splits.key()}*/meta.json")):
        try:
            out.append(full_recipe(json.loads(meta.read_text())["recipe"]))
        except (OSError, KeyError, ValueError):
            continue
    return out


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, loader: DataLoader) -> float:
    """Top-1 accuracy of ``model`` over ``loader`` (a fraction)."""
    model.eval()
    device = next(model.parameters()).device
    correct = total = 0
    for x, y in loader:
        correct += int((model(_to(x, device)).argmax(1).cpu() == y).sum())
        total += len(y)
    return correct / max(total, 1)


def _to(x: Any, device: torch.device) -> Any:
    """A batch's inputs on ``device`` (a tensor, or an object with ``.to``, e.g. a graph batch)."""
    return x.to(device) if device.type != "cpu" and hasattr(x, "to") else x


def _atomic_torch_save(obj: Any, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_atomic(path, buf.getvalue())


def train_backbone(backbone: str, splits: DataSplits, cache_dir: Path, overrides: dict[str, Any] | None = None,
                   weights_dir: Path | None = None, stop_after: int | None = None) -> Path:
    """Train under a file lock: a second process for the same (backbone, dataset, splits) waits,
    then resumes from (or finds) the first one's checkpoint. See :func:`_train_backbone`."""
    from eebench.backbones import BACKBONES

    spec = BACKBONES.get(backbone)
    recipe = recipe_of(spec.name, splits, overrides)
    final = checkpoint_path(cache_dir, spec.name, splits, recipe)
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final.parent / ".lock")):
        if final.exists() and stop_after is None and is_complete(final.parent):
            log.info("backbone: %s on %s is already trained with this recipe: %s", spec.name, splits.spec.name, final)
            return final
        return _train_backbone(backbone, splits, cache_dir, overrides, weights_dir, stop_after)


def is_complete(folder: Path) -> bool:
    """Whether the checkpoint in ``folder`` finished its recipe's schedule (not a ``stop_after`` part)."""
    try:
        return bool(json.loads((folder / "meta.json").read_text()).get("complete", True))
    except (OSError, ValueError):
        return True


def _train_backbone(backbone: str, splits: DataSplits, cache_dir: Path, overrides: dict[str, Any] | None = None,
                    weights_dir: Path | None = None, stop_after: int | None = None) -> Path:
    """Train ``backbone`` on ``splits['train']``, select on ``splits['val']``; resumable.

    Args:
        overrides: recipe keys on top of :func:`default_recipe` (backbone and dataset defaults).
        weights_dir: where published weights are, for ``init: pretrained``.
        stop_after: stop after this epoch of the recipe's schedule (a CPU session's time box; the
            learning rate follows the full schedule), still writing the checkpoint selected on val
            so far; ``meta.json`` says ``complete: false`` and a later call resumes to the end.

    Returns:
        the path of the selected weights (``model.safetensors``).

    Raises:
        ConfigError: an unknown recipe key or value.
        NonFiniteLossError: the loss became NaN or infinite.
        DataUnavailableError: ``init: pretrained`` and the published weights cannot be reached.
    """
    from eebench.backbones import BACKBONES

    spec = BACKBONES.get(backbone)
    recipe = recipe_of(spec.name, splits, overrides)
    unknown = set(recipe) - set(RECIPE_DEFAULTS) - set(OPTIONAL_RECIPE_KEYS)
    if unknown:
        raise ConfigError(f"unknown recipe key(s) {sorted(unknown)}; valid: {', '.join(RECIPE_DEFAULTS)}")
    final = checkpoint_path(cache_dir, spec.name, splits, recipe)
    folder = final.parent
    folder.mkdir(parents=True, exist_ok=True)
    last = folder / "last.pt"
    ckpt = None
    if last.exists():
        try:
            ckpt = torch.load(last, map_location="cpu", weights_only=False)
        except Exception as e:
            raise CorruptCacheError(f"cannot resume from {last} ({type(e).__name__}); delete it to start over") from e
        if ckpt["recipe"] != recipe:
            log.info("backbone: recipe changed; starting over (%s)", last)
            ckpt = None
        elif ckpt["state"]["epoch"] >= recipe["epochs"] and final.exists():
            log.info("backbone: %s on %s is already trained with this recipe: %s", spec.name, splits.spec.name, final)
            return final
    threads = torch.get_num_threads()
    if recipe["num_threads"]:
        torch.set_num_threads(int(recipe["num_threads"]))
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return _train_loop(spec, splits, recipe, folder, final, last, ckpt, weights_dir, stop_after)
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(threads)


def _train_loop(spec: Any, splits: DataSplits, recipe: dict[str, Any], folder: Path, final: Path, last: Path,
                ckpt: dict[str, Any] | None, weights_dir: Path | None, stop_after: int | None) -> Path:
    """The epochs of :func:`_train_backbone`, seeded end to end (initialisation, data order,
    augmentation through the seeded global generator), with deterministic kernels where torch has them."""
    C = splits.spec.num_classes
    torch.manual_seed(recipe["seed"])
    model = build_model(spec.name, C, recipe, weights_dir, training=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    workers = recipe["num_workers"]
    pipeline = spec.pipeline
    train_loader = DataLoader(pipeline.dataset(splits, "train", model, recipe["augment"]),
                              batch_size=recipe["batch_size"], shuffle=True, num_workers=workers, drop_last=True,
                              collate_fn=pipeline.collate_fn, persistent_workers=workers > 0,
                              generator=torch.Generator().manual_seed(recipe["seed"]))
    val_loader = DataLoader(pipeline.dataset(splits, "val", model), batch_size=256, num_workers=workers,
                            collate_fn=pipeline.collate_fn)
    model.to(device)
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    if classifier is None and recipe["backbone_lr_ratio"] != 1.0:
        raise ConfigError(f"backbone_lr_ratio needs a model with get_classifier(); {spec.name} has none")
    head = {id(p) for p in classifier.parameters()} if classifier is not None else set()
    groups = [{"params": [p for p in model.parameters() if id(p) not in head and p.requires_grad],
               "lr": recipe["lr"] * recipe["backbone_lr_ratio"]},
              {"params": [p for p in model.parameters() if id(p) in head], "lr": recipe["lr"]}]
    groups = [g for g in groups if g["params"]]
    if recipe["optimizer"] == "sgd":
        opt = torch.optim.SGD(groups, lr=recipe["lr"], momentum=recipe["momentum"],
                              weight_decay=recipe["weight_decay"], nesterov=True)
    else:
        opt = torch.optim.AdamW(groups, lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    steps_per_epoch = len(train_loader)
    total, warmup = recipe["epochs"] * steps_per_epoch, int(recipe["warmup_epochs"] * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, warmup, total))

    state = {"epoch": 0, "best_val": -1.0, "best_epoch": 0, "history": [], "seconds": 0.0}
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        state = ckpt["state"]
        torch.set_rng_state(ckpt["rng"])
        log.info("backbone: resuming %s on %s from epoch %d", spec.name, splits.spec.name, state["epoch"])
    best_path = folder / "best.safetensors"
    bar = tqdm(total=recipe["epochs"], initial=state["epoch"], desc=f"train {spec.name}", unit="epoch", leave=False)
    end = recipe["epochs"] if stop_after is None else min(int(stop_after), recipe["epochs"])
    estimated = False
    while state["epoch"] < end:
        t0 = time.time()
        model.train()
        for i, (x, y) in enumerate(tqdm(train_loader, desc=f"epoch {state['epoch'] + 1}", unit="batch", leave=False)):
            loss = F.cross_entropy(model(_to(x, device)), _to(y, device), label_smoothing=recipe["label_smoothing"])
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"training {spec.name} on {splits.spec.name}: loss {loss.item():g} at epoch "
                                         f"{state['epoch'] + 1}; lower the learning rate (--set lr=...)")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if i == 0:
                t_first = time.time()
            elif i == 1 and not estimated:
                estimated = True
                per_epoch = (time.time() - t_first) * steps_per_epoch
                log.info("backbone: about %.0f s per epoch, %.1f min for the %d epoch(s) to go (from the second "
                         "batch)", per_epoch, per_epoch * (end - state["epoch"]) / 60, end - state["epoch"])
        val_acc = evaluate_accuracy(model, val_loader)
        state["epoch"] += 1
        state["seconds"] += time.time() - t0
        state["history"].append({"epoch": state["epoch"], "val_accuracy": val_acc, "loss": loss.item(),
                                 "seconds": round(time.time() - t0, 1)})
        log.info("backbone: %s on %s epoch %d/%d: val accuracy %.4f (%.0f s)", spec.name, splits.spec.name,
                 state["epoch"], recipe["epochs"], val_acc, time.time() - t0)
        if val_acc > state["best_val"]:
            state["best_val"], state["best_epoch"] = val_acc, state["epoch"]
            save_hashed({k: v.detach().cpu() for k, v in model.state_dict().items()}, best_path)
        _atomic_torch_save({"model": {k: v.cpu() for k, v in model.state_dict().items()},
                            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "state": state,
                            "recipe": recipe, "rng": torch.get_rng_state()}, last)
        bar.set_postfix(val=f"{val_acc:.4f}", best=f"{state['best_val']:.4f}")
        bar.update(1)
    bar.close()
    meta = {"backbone": spec.name, "dataset": splits.spec.name, "splits": splits.describe(), "recipe": recipe,
            "best_val_accuracy": state["best_val"], "best_epoch": state["best_epoch"],
            "train_seconds": state["seconds"], "history": state["history"],
            "epochs_done": state["epoch"], "complete": state["epoch"] >= recipe["epochs"]}
    if best_path.exists():
        write_atomic(final, best_path.read_bytes())
    write_json(folder / "meta.json", meta)
    log.info("backbone: %s on %s: val accuracy %.4f (epoch %d), %.0f s", spec.name, splits.spec.name,
             state["best_val"], state["best_epoch"], state["seconds"])
    return final


def load_trained(backbone: str, splits: DataSplits, cache_dir: Path, recipe: dict[str, Any]) -> nn.Module:
    """The weights trained here for (backbone, dataset, splits, recipe), in the model their recipe
    built (same input size and normalisation), checked against their content hash (a checkpoint
    written before checkpoints carried one gets it now).

    Raises:
        CorruptCacheError: the file cannot be read, fails its hash or does not fit the model.
    """
    from eebench.backbones import BACKBONES

    spec = BACKBONES.get(backbone)
    path = checkpoint_path(cache_dir, spec.name, splits, recipe)
    model = build_model(spec.name, splits.spec.num_classes, full_recipe(recipe))
    try:
        try:
            state, _ = load_verified(path)
        except ValueError as e:
            if "carries no content hash" not in str(e):
                raise
            state = load_file(str(path))
            save_hashed(state, path)
            log.info("backbone: %s had no content hash; added", path)
        model.load_state_dict(state)
    except Exception as e:
        raise CorruptCacheError(f"trained weights {path} are unreadable or corrupt ({type(e).__name__}: {e}); delete "
                                f"them (rm -r {path.parent}) and train again") from e
    return model
