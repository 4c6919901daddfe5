"""Any timm model by name (``--backbone timm:NAME``): one exit adapter on timm's own vocabulary.

The exits sit at the intermediates timm's ``forward_intermediates`` returns (``feature_info``: a
stage of a CNN, a block of a ViT); ``--set backbone.exits=[i, ...]`` picks indices among them, and
the last intermediate always feeds the model's own head (exit K). By default every intermediate
but a stem one (``act1``, ``bn1``, ``stem``, ...) is an exit: every stage of a CNN, every block of
a ViT.

The backbone runs block by block, so that a runtime can stop early: the stem (everything before
the first exit's module) is read as that module's input, each later block is the run of sibling
modules up to the next exit's module, and the last block ends with the modules ``forward_features``
calls after the last intermediate (found by tracing it once) and ``forward_head``. The adapter
checks on a random input that this reproduces the model's logits, and refuses a model where it
does not. The IM is chosen from the intermediate's shape: a feature map ``[B, C, H, W]`` (or NHWC)
is average-pooled to at most 4×4 and fed to the MLP the CIFAR ResNets use; a token sequence
``[B, T, D]`` gives its class token (or, without one, the token mean) through the model's final
norm, and a Linear IM.

Recipes: a model trained here on small images (≤ 64 px) trains from scratch at the data's size and
channels; on larger images it fine-tunes timm's pretrained weights (:func:`default_recipe_for`).
"""
from __future__ import annotations

import difflib
import inspect
import logging
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from eebench.backbones import BACKBONES, BackboneSpec
from eebench.backbones.base import ExitAdapter, MLPExit
from eebench.errors import ConfigError, UnknownNameError, UsageError

log = logging.getLogger(__name__)

#: Names timm gives a stem module; an intermediate there is not an exit by default.
STEM_MODULES = ("stem", "conv_stem", "conv1", "bn1", "act1")
#: Images up to this many pixels a side train from scratch; larger ones fine-tune pretrained weights.
SMALL_IMAGE_PX = 64


class _Stop(Exception):
    """Raised by a pre-hook to end a forward pass once the input it wanted has been seen."""


class TimmExits(ExitAdapter):
    """Exits at a timm model's ``forward_intermediates`` indices (see the module docstring).

    Args:
        model: a timm model with ``forward_intermediates`` and ``feature_info``.
        exits: intermediate indices 0..M−1 after which an exit sits (None: every non-stem one); the
            last index, M−1, is always the last exit (the model's head).
        pool: feature maps are average-pooled to at most ``pool × pool``.
        hidden: hidden units of a feature-map IM.

    Raises:
        UsageError: the model has no ``forward_intermediates``, or running it block by block does not
            reproduce its logits.
        ConfigError: an index of ``exits`` outside 0..M−1, fewer than 2 exits, or two exits that do not
            sit in one sequence of modules.
    """

    def __init__(self, model: nn.Module, exits: list[int] | None = None, pool: int = 4, hidden: int = 256):
        super().__init__(model)
        name = getattr(model, "default_cfg", {}).get("architecture", type(model).__name__)
        if not hasattr(model, "forward_intermediates") or not getattr(model, "feature_info", None):
            raise UsageError(f"timm model {name} ({type(model).__name__}) has no forward_intermediates: the generic "
                             f"adapter cannot place exits in it; choose a model that has one (ResNet, EfficientNet, "
                             f"ConvNeXt, ViT, ...)")
        names = [f["module"] for f in model.feature_info]
        M = len(names)
        self.exit_indices = choose_exits(names, exits, name)
        self.intermediate_names = [names[i] for i in self.exit_indices]
        self.num_blocks = len(self.exit_indices)
        # plain lists: the modules stay registered under ``model`` only
        self._segments = [[model.get_submodule(self.intermediate_names[0])]] + [
            self._siblings(a, b) for a, b in zip(self.intermediate_names, self.intermediate_names[1:])]
        self.pool, self.hidden = pool, hidden
        self.nhwc = getattr(model, "output_fmt", "NCHW") == "NHWC"
        self.class_token = getattr(model, "cls_token", None) is not None and getattr(model, "num_prefix_tokens", 0) > 0
        x = torch.randn(2, *example_size(model))
        self._tail = self._trace_tail(x, model.get_submodule(names[-1]))
        self._check(x, name)
        with torch.no_grad():
            h, self.im_dims = self.stem(x), []
            for k in range(1, self.num_blocks):
                h = self.block(k, h)
                self.tokens = h.dim() == 3
                self.im_dims.append(int(self.im_input(k, h).shape[1]))
        kind = ("Linear on the normed class token" if self.class_token else "Linear on the normed token mean") \
            if self.tokens else f"MLP({hidden}) on the output average-pooled to at most {pool}x{pool}"
        self.exits_doc = (f"after timm intermediates {self.exit_indices} of {M} "
                          f"({', '.join(self.intermediate_names)}); IM = {kind}")

    def _siblings(self, a: str, b: str) -> list[nn.Module]:
        """The modules after ``a`` up to and including ``b``, two children of one parent, in order."""
        pa, _, ca = a.rpartition(".")
        pb, _, cb = b.rpartition(".")
        parent = self.model.get_submodule(pa) if pa else self.model
        order = [n for n, _ in parent.named_children()]
        if pa != pb or ca not in order or cb not in order or order.index(ca) >= order.index(cb):
            raise ConfigError(f"backbone.exits: intermediates {a} and {b} are not in one sequence of modules; choose "
                              f"exits among the model's stages or blocks ({', '.join(self.intermediate_names)})")
        return [getattr(parent, n) for n in order[order.index(ca) + 1:order.index(cb) + 1]]

    @torch.no_grad()
    def _trace_tail(self, x: torch.Tensor, last: nn.Module) -> list[nn.Module]:
        """The top-level modules ``forward_features`` calls after the last intermediate's module returns."""
        done, tail, hooks = [False], [], []
        hooks.append(last.register_forward_hook(lambda *_: done.__setitem__(0, True)))
        for child in self.model.children():
            hooks.append(child.register_forward_pre_hook(
                lambda mod, args: tail.append(mod) if done[0] else None))
        try:
            self.model.forward_features(x)
        finally:
            for h in hooks:
                h.remove()
        return tail

    @torch.no_grad()
    def _check(self, x: torch.Tensor, name: str) -> None:
        want = self.model(x)
        got = self.forward_exits(x)[1]
        if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()) + 1e-6):
            raise UsageError(f"timm model {name}: running it block by block between its intermediates does not "
                             f"reproduce its output, so the generic adapter cannot place exits in it; choose another "
                             f"model or register an adapter for it")

    # --- ExitAdapter hooks ------------------------------------------------------------------------
    def stem(self, x: torch.Tensor) -> torch.Tensor:
        seen: list[torch.Tensor] = []

        def grab(mod: nn.Module, args: tuple) -> None:
            seen.append(args[0])
            raise _Stop

        handle = self._segments[0][0].register_forward_pre_hook(grab)
        try:
            self.model.forward_features(x)
        except _Stop:
            pass
        finally:
            handle.remove()
        return seen[0]

    def block(self, k: int, h: torch.Tensor) -> torch.Tensor:
        for module in self._segments[k - 1]:
            h = module(h)
        if k == self.num_blocks:
            for module in self._tail:
                h = module(h)
        return h

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(h)

    def im_input(self, k: int, h: torch.Tensor) -> torch.Tensor:
        if h.dim() == 3:
            norm = getattr(self.model, "norm", None) or nn.Identity()
            return norm(h[:, 0] if self.class_token else h.mean(1))
        if h.dim() != 4:
            raise UsageError(f"intermediate {self.intermediate_names[k - 1]} has shape {tuple(h.shape)}: the generic "
                             f"adapter reads feature maps and token sequences only")
        if self.nhwc:
            h = h.permute(0, 3, 1, 2)
        return F.adaptive_avg_pool2d(h, (min(self.pool, h.shape[2]), min(self.pool, h.shape[3]))).flatten(1)

    def make_im(self, k: int, num_classes: int) -> nn.Module:
        if self.tokens:
            return nn.Linear(self.im_dims[k - 1], num_classes)
        return MLPExit(self.im_dims[k - 1], self.hidden, num_classes)


def example_size(model: nn.Module) -> tuple[int, int, int]:
    """``(C, H, W)`` of an input ``model`` takes: its data config, with the image size a patch
    embedding was built for (a ViT built with ``img_size`` accepts that size only)."""
    C, H, W = timm.data.resolve_data_config(model=model)["input_size"]
    fixed = getattr(getattr(model, "patch_embed", None), "img_size", None)
    return (C, *fixed) if fixed is not None else (C, H, W)


def choose_exits(names: list[str], exits: Any, model: str) -> list[int]:
    """The sorted intermediate indices with an exit: ``exits`` (None: every one but a stem one) plus
    the last, M − 1 (``names``: the modules of the model's M intermediates).

    Raises:
        ConfigError: ``exits`` is not a list of indices in 0..M−1, or leaves no exit before the last.
    """
    M = len(names)
    if exits is None:
        exits = [i for i in range(M) if not (i == 0 and names[0] in STEM_MODULES)]
    if not isinstance(exits, list):
        raise ConfigError(f"backbone.exits={exits!r}: expected a list of intermediate indices, e.g. [1, 2, 3]")
    bad = [i for i in exits if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < M]
    if bad:
        raise ConfigError(f"backbone.exits={exits}: {bad} out of range; {model} has {M} intermediates, "
                          f"indices 0..{M - 1} ({', '.join(names)})")
    chosen = sorted(set(exits) | {M - 1})
    if len(chosen) < 2:
        raise ConfigError(f"backbone.exits={exits}: an early-exit model needs an exit before the last "
                          f"intermediate ({M - 1}); choose among 0..{M - 2}")
    return chosen


def meta_model(model_name: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` on the meta device: the structure, no memory, no weights.

    Raises:
        ConfigError: a model keyword the model does not take.
    """
    try:
        with torch.device("meta"):
            return timm.create_model(model_name, **kwargs)
    except TypeError as e:
        raise ConfigError(f"timm:{model_name} does not take the model options {sorted(kwargs)}: {e}; drop the "
                          f"--set backbone.KEY that caused it") from None


def check_exits(model_name: str, exits: Any, model_kwargs: dict[str, Any] | None = None) -> list[int]:
    """:func:`choose_exits` for ``timm:model_name`` built with ``model_kwargs``, before any compute."""
    model = meta_model(model_name, **(model_kwargs or {}))
    return choose_exits([f["module"] for f in model.feature_info], exits, model_name)


def timm_model_name(name: str) -> str:
    """The timm model of ``timm:NAME``, checked against timm's registry.

    Raises:
        UnknownNameError: timm has no such model (with a did-you-mean from ``timm.list_models``).
    """
    model = name[len("timm:"):]
    if not timm.is_model(model):
        close = difflib.get_close_matches(model, timm.list_models(), n=3, cutoff=0.6)
        raise UnknownNameError("timm model", model, ["any name `timm.list_models()` gives"],
                               f"timm:{close[0]}" if close else None)
    return model


def accepts(model_name: str, key: str) -> bool:
    """Whether timm's constructor of ``model_name`` takes keyword ``key`` (``img_size``, ...)."""
    return key in inspect.signature(type(meta_model(model_name)).__init__).parameters


def has_pretrained(model_name: str) -> bool:
    """Whether timm publishes weights for ``model_name`` (a hub id or URL in its pretrained config)."""
    cfg = timm.models.get_pretrained_cfg(model_name)
    return bool(cfg is not None and (cfg.hf_hub_id or cfg.url))


def default_recipe_for(model_name: str, info: Any, hflip_invariant: bool | None) -> dict[str, Any]:
    """The training recipe of ``timm:model_name`` on images described by ``info``
    (:class:`eebench.data.splits.ImageInfo`), before ``--set`` overrides.

    Small images (≤ :data:`SMALL_IMAGE_PX` a side): from scratch at the data's size and channels
    (``model_kwargs`` ``in_chans``, and ``img_size`` where the model takes one), AdamW, cosine,
    random crops. Larger ones: fine-tune timm's pretrained weights at the model's own input size
    (greyscale read as RGB), SGD with the pretrained part at a tenth of the classifier's rate.
    Horizontal flips only where the dataset declares that they preserve the class.
    """
    augment = "crop_flip" if hflip_invariant else "crop"
    if max(info.height, info.width) <= SMALL_IMAGE_PX:
        C = info.channels
        kwargs: dict[str, Any] = {"in_chans": C}
        if accepts(model_name, "img_size"):
            kwargs["img_size"] = info.height if info.height == info.width else [info.height, info.width]
        return {"init": "scratch", "optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05, "epochs": 30,
                "batch_size": 128, "augment": augment,
                "input_cfg": {"input_size": [C, info.height, info.width], "crop_pct": 1.0,
                              "interpolation": "bilinear", "mean": [0.5] * C, "std": [0.5] * C},
                "model_kwargs": kwargs}
    return {"init": "pretrained", "optimizer": "sgd", "lr": 0.01, "weight_decay": 1e-4, "epochs": 10,
            "batch_size": 64, "augment": augment, "backbone_lr_ratio": 0.1, "warmup_epochs": 1,
            "input_cfg": {}, "model_kwargs": {}}


def resolve(name: str) -> tuple[str, BackboneSpec] | None:
    """The registry's resolver for ``timm:NAME``."""
    if not name.startswith("timm:"):
        return None
    model = timm_model_name(name)
    structure = meta_model(model)
    if not hasattr(structure, "forward_intermediates") or not getattr(structure, "feature_info", None):
        raise UsageError(f"timm model {model} ({type(structure).__name__}) has no forward_intermediates: the generic "
                         f"adapter cannot place exits in it; choose a model that has one (ResNet, EfficientNet, "
                         f"ConvNeXt, ViT, ...)")
    canonical = f"timm:{model}"
    published = has_pretrained(model)
    return canonical, BackboneSpec(
        name=canonical, model_name=model, adapter=TimmExits, generic=True,
        description=f"timm {model}, exits at its forward_intermediates",
        weights_file=f"{model}.safetensors" if published else None, pretrained_on="imagenet" if published else None,
        recipe_for=lambda info, hflip: default_recipe_for(model, info, hflip))


BACKBONES.add_resolver(resolve, "timm:NAME (any timm model with forward_intermediates)")
