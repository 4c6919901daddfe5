"""Training a registered backbone on a dataset: from scratch, or fine-tuning its published weights.

SGD with momentum (or AdamW where a recipe says so), a per-step cosine schedule, standard
augmentation (random crop with 4-pixel padding, plus horizontal flips where a flip preserves the
class), selection of the checkpoint on ``val`` — never on ``test``. Resumable: the state after
every epoch is written atomically to ``last.pt`` and a new call continues from it. The selected
weights go to ``model.safetensors`` under ``<cache>/backbones/<backbone>/<dataset>-<split key>/``.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from filelock import FileLock

from eebench.data import DataSplits
from eebench.errors import ConfigError, CorruptCacheError, NonFiniteLossError

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
}


def checkpoint_dir(cache_dir: Path, backbone: str, splits: DataSplits) -> Path:
    return Path(cache_dir) / "backbones" / backbone / f"{splits.spec.name}-{splits.key()}"


def checkpoint_path(cache_dir: Path, backbone: str, splits: DataSplits) -> Path:
    """Where the selected weights of (backbone, dataset, splits) live once trained."""
    return checkpoint_dir(cache_dir, backbone, splits) / "model.safetensors"


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, loader: DataLoader) -> float:
    """Top-1 accuracy of ``model`` over ``loader`` (a fraction)."""
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return correct / max(total, 1)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train_backbone(backbone: str, splits: DataSplits, cache_dir: Path, overrides: dict[str, Any] | None = None,
                   weights_dir: Path | None = None) -> Path:
    """Train under a file lock: a second process for the same (backbone, dataset, splits) waits,
    then resumes from (or finds) the first one's checkpoint. See :func:`_train_backbone`."""
    from eebench.backbones import BACKBONES

    folder = checkpoint_dir(cache_dir, BACKBONES.get(backbone).name, splits)
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / ".lock")):
        final = checkpoint_path(cache_dir, BACKBONES.get(backbone).name, splits)
        if final.exists() and not overrides:
            return final
        return _train_backbone(backbone, splits, cache_dir, overrides, weights_dir)


def _train_backbone(backbone: str, splits: DataSplits, cache_dir: Path, overrides: dict[str, Any] | None = None,
                    weights_dir: Path | None = None) -> Path:
    """Train ``backbone`` on ``splits['train']``, select on ``splits['val']``; resumable.

    Args:
        overrides: recipe keys on top of :data:`RECIPE_DEFAULTS` and the backbone's recipe.
        weights_dir: where published weights are, for ``init: pretrained``.

    Returns:
        the path of the selected weights (``model.safetensors``).

    Raises:
        ConfigError: an unknown recipe key or value.
        NonFiniteLossError: the loss became NaN or infinite.
    """
    from eebench.backbones import BACKBONES, create_model

    spec = BACKBONES.get(backbone)
    recipe = {**RECIPE_DEFAULTS, **spec.recipe, **(overrides or {})}
    unknown = set(recipe) - set(RECIPE_DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown recipe key(s) {sorted(unknown)}; valid: {', '.join(RECIPE_DEFAULTS)}")
    folder = checkpoint_dir(cache_dir, spec.name, splits)
    folder.mkdir(parents=True, exist_ok=True)
    C = splits.spec.num_classes
    torch.manual_seed(recipe["seed"])
    if recipe["init"] == "pretrained":
        model = create_model(spec.name, C, pretrained=True, weights_dir=weights_dir)
        if model.get_classifier().out_features != C:
            model.reset_classifier(C)
    elif recipe["init"] == "scratch":
        model = create_model(spec.name, C)
    else:
        raise ConfigError(f"recipe init={recipe['init']!r}: must be scratch or pretrained")

    workers = recipe["num_workers"]
    pipeline = spec.pipeline
    train_loader = DataLoader(pipeline.dataset(splits, "train", model, recipe["augment"]),
                              batch_size=recipe["batch_size"], shuffle=True, num_workers=workers, drop_last=True,
                              collate_fn=pipeline.collate_fn, persistent_workers=workers > 0,
                              generator=torch.Generator().manual_seed(recipe["seed"]))
    val_loader = DataLoader(pipeline.dataset(splits, "val", model), batch_size=256, num_workers=workers,
                            collate_fn=pipeline.collate_fn)
    total = recipe["epochs"] * len(train_loader)
    if recipe["optimizer"] == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=recipe["lr"], momentum=recipe["momentum"],
                              weight_decay=recipe["weight_decay"], nesterov=True)
    elif recipe["optimizer"] == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    else:
        raise ConfigError(f"recipe optimizer={recipe['optimizer']!r}: must be sgd or adamw")
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)

    state = {"epoch": 0, "best_val": -1.0, "best_epoch": 0, "history": [], "seconds": 0.0}
    last = folder / "last.pt"
    if last.exists():
        try:
            ckpt = torch.load(last, map_location="cpu", weights_only=False)
        except Exception as e:
            raise CorruptCacheError(f"cannot resume from {last} ({type(e).__name__}); delete it to start over") from e
        if ckpt["recipe"] == recipe:
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
            state = ckpt["state"]
            torch.set_rng_state(ckpt["rng"])
            log.info("backbone: resuming %s on %s from epoch %d", spec.name, splits.spec.name, state["epoch"])
        else:
            log.info("backbone: recipe changed; starting over (%s)", last)
    best_path = folder / "best.safetensors"
    bar = tqdm(total=recipe["epochs"], initial=state["epoch"], desc=f"train {spec.name}", unit="epoch", leave=False)
    while state["epoch"] < recipe["epochs"]:
        t0 = time.time()
        model.train()
        for x, y in train_loader:
            loss = F.cross_entropy(model(x), y, label_smoothing=recipe["label_smoothing"])
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"training {spec.name} on {splits.spec.name}: loss {loss.item():g} at epoch "
                                         f"{state['epoch'] + 1}; lower the learning rate (--set lr=...)")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        val_acc = evaluate_accuracy(model, val_loader)
        state["epoch"] += 1
        state["seconds"] += time.time() - t0
        state["history"].append({"epoch": state["epoch"], "val_accuracy": val_acc, "loss": loss.item()})
        if val_acc > state["best_val"]:
            state["best_val"], state["best_epoch"] = val_acc, state["epoch"]
            tmp = best_path.with_suffix(".tmp")
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
            os.replace(tmp, best_path)
        _atomic_torch_save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                            "scheduler": sched.state_dict(), "state": state, "recipe": recipe,
                            "rng": torch.get_rng_state()}, last)
        bar.set_postfix(val=f"{val_acc:.4f}", best=f"{state['best_val']:.4f}")
        bar.update(1)
    bar.close()
    meta = {"backbone": spec.name, "dataset": splits.spec.name, "splits": splits.describe(), "recipe": recipe,
            "best_val_accuracy": state["best_val"], "best_epoch": state["best_epoch"],
            "train_seconds": state["seconds"], "history": state["history"]}
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))
    final = checkpoint_path(cache_dir, spec.name, splits)
    os.replace(best_path, final)
    log.info("backbone: %s on %s: val accuracy %.4f (epoch %d), %.0f s", spec.name, splits.spec.name,
             state["best_val"], state["best_epoch"], state["seconds"])
    return final


def load_trained(backbone: str, splits: DataSplits, cache_dir: Path) -> nn.Module:
    """The weights trained here for (backbone, dataset, splits).

    Raises:
        CorruptCacheError: the file cannot be read or does not fit the model.
    """
    from eebench.backbones import BACKBONES, create_model

    spec = BACKBONES.get(backbone)
    path = checkpoint_path(cache_dir, spec.name, splits)
    model = create_model(spec.name, splits.spec.num_classes)
    try:
        model.load_state_dict(load_file(str(path)))
    except Exception as e:
        raise CorruptCacheError(f"trained weights {path} are unreadable ({type(e).__name__}); delete "
                                f"{path.parent} and train again") from e
    return model
