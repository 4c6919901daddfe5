"""T2T-ViT (Yuan et al., "Tokens-to-Token ViT: Training Vision Transformers from Scratch on
ImageNet", ICCV 2021), the backbones of JEI-DNN, registered with timm.

``t2t_vit_7`` (width 256, 7 blocks, 4 heads, MLP ratio 2) and ``t2t_vit_14`` (width 384,
14 blocks, 6 heads, MLP ratio 3), both with the Performer tokens-to-token (T2T) module of the
published checkpoints:

- soft split 0: ``Unfold(7, stride 4, padding 2)`` → tokens of ``in_chans·49`` values
  (224 px: 56×56 tokens);
- T2T layer 1: a one-head Performer layer (:class:`TokenPerformer`) to ``token_dim`` = 64, then
  re-structurisation to an image and soft split 1: ``Unfold(3, stride 2, padding 1)`` (28×28);
- T2T layer 2: the same on ``64·9`` values, soft split 2 (14×14 = 196 tokens at 224 px);
- ``project``: Linear(576, D); a class token and the fixed sinusoidal position table;
- the ViT blocks (timm's :class:`~timm.models.vision_transformer.Block`, no qkv bias), the final
  LayerNorm and the classifier on the class token.

``pretrained=True`` loads the official checkpoints of yitu-opensource/T2T-ViT
(``71.7_T2T_ViT_7.pth.tar``, ``81.5_T2T_ViT_14.pth.tar``: timm training checkpoints holding
``state_dict_ema`` and ``state_dict``, keys possibly prefixed ``module.``) from their release URL
or from a local file (``pretrained_cfg_overlay=dict(file=...)``), through
:func:`checkpoint_filter_fn`, which prefers the EMA weights. The key layout of this
implementation is the official one, so a checkpoint loads with no missing or unexpected keys.

Attention scale: the published weights were trained with q·k scaled by ``D^-1/2`` (embed width),
not ``(D/heads)^-1/2``: the official factories set ``qk_scale = D^-0.5`` whenever they load
them. Every model here uses ``D^-0.5``, so weights trained or fine-tuned here and the published
weights are read by the same network.

Resolution: the token grid follows the three unfolds (224 px → 14×14, 56 px → 4×4, 28 px → 2×2);
build with ``img_size`` (or a ``pretrained_cfg_overlay`` ``input_size``) for another resolution;
the position table is re-made for the grid, and a published table is resampled (bicubic) by the
checkpoint filter, as the official ``load_for_transfer_learning`` does.

On MNIST (trained from scratch, one input channel) the harness uses the native 28 px: the T2T
module still mixes 7×7 = 49 overlapping 7×7 patches, then 4×4 neighbourhoods, before the blocks
see 2×2 tokens + the class token, so the small grid loses no pixel (``docs/decisions.md`` B1).
"""
from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import resample_abs_pos_embed, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, load_state_dict, register_model
from timm.models.vision_transformer import Attention, Block
from torch import nn

from eebench.backbones import BackboneSpec, register_backbone
from eebench.backbones.vit import ViTExits

__all__ = ["T2TViT", "T2TModule", "TokenPerformer", "T2TViTExits", "checkpoint_filter_fn",
           "sinusoid_table", "WEIGHT_FILES"]

log = logging.getLogger(__name__)

#: File names of the official ImageNet checkpoints (GitHub release ``main`` of yitu-opensource/T2T-ViT).
WEIGHT_FILES = {"t2t_vit_7": "71.7_T2T_ViT_7.pth.tar", "t2t_vit_14": "81.5_T2T_ViT_14.pth.tar"}
_URL = "https://github.com/yitu-opensource/T2T-ViT/releases/download/main/"

#: (kernel, stride, padding) of the three soft splits.
SOFT_SPLITS = ((7, 4, 2), (3, 2, 1), (3, 2, 1))


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))


def token_grid(img_size: int | Sequence[int]) -> tuple[int, int]:
    """The token grid after the three soft splits: ``⌊(s + 2p − k)/stride⌋ + 1`` per split and side."""
    h, w = _pair(img_size)
    for k, s, p in SOFT_SPLITS:
        h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    return h, w


def sinusoid_table(n_position: int, dim: int) -> torch.Tensor:
    """The fixed sinusoidal position table of T2T-ViT (Vaswani et al. 2017, §3.5), ``[1, n_position, dim]``:
    entry (pos, j) is sin (j even) or cos (j odd) of ``pos / 10000^(2⌊j/2⌋/dim)``."""
    pos = np.arange(n_position, dtype=np.float64)[:, None]
    j = np.arange(dim)
    angle = pos / np.power(10000.0, 2 * (j // 2) / dim)[None, :]
    table = np.where(j % 2 == 0, np.sin(angle), np.cos(angle))
    return torch.tensor(table, dtype=torch.float32).unsqueeze(0)


class TokenPerformer(nn.Module):
    """One-head Performer layer of the T2T module (Choromanski et al., ICLR 2021, positive random
    features for the softmax kernel), as in the official ``Token_performer``.

    ``[B, T, dim]`` → ``[B, T, emb]``: LayerNorm, ``kqv`` = Linear(dim, 3·emb) split as (k, q, v);
    φ(x) = exp(wᵀx − |x|²/2)/√m with ``m = emb·kernel_ratio`` fixed orthogonal random features
    ``w`` [m, emb] (a frozen parameter, part of the checkpoint); y = φ(q)(φ(k)ᵀv) / (φ(q)·Σ_t φ(k_t));
    output ``v + proj(y)`` (v as the skip: the width changes), then ``+ mlp(norm2(·))``.
    """

    def __init__(self, dim: int, emb: int, kernel_ratio: float = 0.5, drop: float = 0.1):
        super().__init__()
        self.emb = emb
        self.kqv = nn.Linear(dim, 3 * emb)
        self.dp = nn.Dropout(drop)
        self.proj = nn.Linear(emb, emb)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(emb)
        self.epsilon = 1e-8
        self.mlp = nn.Sequential(nn.Linear(emb, emb), nn.GELU(), nn.Linear(emb, emb), nn.Dropout(drop))
        self.m = int(emb * kernel_ratio)
        w = nn.init.orthogonal_(torch.empty(self.m, emb)) * math.sqrt(self.m)
        self.w = nn.Parameter(w, requires_grad=False)

    def random_features(self, x: torch.Tensor) -> torch.Tensor:
        """φ(x) for ``x`` [B, T, emb] → ``[B, T, m]`` (computed in float32)."""
        x = x.float()
        return torch.exp(x @ self.w.t() - (x * x).sum(-1, keepdim=True) / 2) / math.sqrt(self.m)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        k, q, v = torch.split(self.kqv(x), self.emb, dim=-1)
        kp, qp = self.random_features(k), self.random_features(q)            # [B, T, m]
        normaliser = (qp @ kp.sum(dim=1).unsqueeze(-1))                       # [B, T, 1]
        kptv = v.float().transpose(1, 2) @ kp                                 # [B, emb, m]
        y = (qp @ kptv.transpose(1, 2)) / (normaliser + self.epsilon)         # [B, T, emb]
        return v + self.dp(self.proj(y))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class T2TModule(nn.Module):
    """Tokens-to-token: image ``[B, C, H, W]`` → tokens ``[B, N, embed_dim]`` (N = grid area).

    Three soft splits (overlapping unfolds) with a Performer layer re-structuring the tokens in
    between, then a linear projection (``project``).
    """

    def __init__(self, img_size: int | Sequence[int] = 224, in_chans: int = 3, embed_dim: int = 768,
                 token_dim: int = 64):
        super().__init__()
        (k0, s0, p0), (k1, s1, p1), (k2, s2, p2) = SOFT_SPLITS
        self.soft_split0 = nn.Unfold(kernel_size=k0, stride=s0, padding=p0)
        self.soft_split1 = nn.Unfold(kernel_size=k1, stride=s1, padding=p1)
        self.soft_split2 = nn.Unfold(kernel_size=k2, stride=s2, padding=p2)
        self.attention1 = TokenPerformer(dim=in_chans * k0 * k0, emb=token_dim)
        self.attention2 = TokenPerformer(dim=token_dim * k1 * k1, emb=token_dim)
        self.project = nn.Linear(token_dim * k2 * k2, embed_dim)
        self.img_size = _pair(img_size)
        self.grid_size = token_grid(self.img_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]

    @staticmethod
    def _restructure(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *hw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        grids = []
        for k, s, p in SOFT_SPLITS:
            h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
            grids.append((h, w))
        x = self.attention1(self.soft_split0(x).transpose(1, 2))
        x = self.attention2(self.soft_split1(self._restructure(x, grids[0])).transpose(1, 2))
        x = self.soft_split2(self._restructure(x, grids[1])).transpose(1, 2)
        return self.project(x)


class T2TAttention(Attention):
    """timm's multi-head attention with an explicit q·k scale (``self.scale``, set by the model):
    the published T2T-ViT weights use ``embed_dim^-0.5``."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
                ) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=self.scale,
                                           dropout_p=self.attn_drop.p if self.training else 0.0)
        x = x.transpose(1, 2).reshape(B, N, self.attn_dim)
        return self.proj_drop(self.proj(self.norm(x)))


class T2TViT(nn.Module):
    """T2T-ViT: image ``[B, in_chans, H, W]`` (normalised) → logits ``[B, num_classes]``.

    Args:
        img_size: input resolution (int or (H, W)); sets the token grid and the position table.
        embed_dim, depth, num_heads, mlp_ratio: the ViT part.
        qk_scale: attention scale; None = ``embed_dim^-0.5`` (that of the published weights).
        token_dim: width of the T2T Performer layers (64).
        drop_rate, attn_drop_rate, drop_path_rate: dropout after the position table, attention
            dropout, stochastic depth (linearly increasing over blocks).
    """

    def __init__(self, img_size: int | Sequence[int] = 224, in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: int = 256, depth: int = 7, num_heads: int = 4, mlp_ratio: float = 2.0,
                 qkv_bias: bool = False, qk_scale: float | None = None, token_dim: int = 64,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 global_pool: str = "token"):
        super().__init__()
        if global_pool != "token":
            raise ValueError("T2T-ViT classifies the class token (global_pool='token')")
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.tokens_to_token = T2TModule(img_size, in_chans, embed_dim, token_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(sinusoid_table(self.tokens_to_token.num_patches + 1, embed_dim),
                                      requires_grad=False)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, attn_drop=attn_drop_rate,
                  proj_drop=drop_rate, drop_path=dpr[i], norm_layer=nn.LayerNorm, attn_layer=T2TAttention)
            for i in range(depth)])
        scale = qk_scale if qk_scale is not None else embed_dim ** -0.5
        for blk in self.blocks:
            blk.attn.scale = scale
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "pos_embed"}

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward_embed(self, x: torch.Tensor) -> torch.Tensor:
        """Image → tokens entering block 1: T2T tokens with the class token prepended, plus the
        position table, ``[B, 1 + N, D]``."""
        x = self.tokens_to_token(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.pos_drop(x + self.pos_embed)

    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None,
                              norm: bool = True) -> list[torch.Tensor]:
        """The class token after the blocks in ``indices`` (0-based; an int n: the last n), through
        the final norm when ``norm``; each ``[B, D]``."""
        depth = len(self.blocks)
        take = range(depth - indices, depth) if isinstance(indices, int) else (indices or range(depth))
        take = set(take)
        out, x = [], self.forward_embed(x)
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in take:
                out.append(self.norm(x[:, 0]) if norm else x[:, 0])
        return out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image → all tokens after the blocks and the final norm, ``[B, 1 + N, D]``."""
        x = self.forward_embed(x)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Normed tokens ``[B, 1 + N, D]`` → logits ``[B, C]`` from the class token."""
        x = x[:, 0]
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def load_pretrained(self, checkpoint_path: str, strict: bool = True) -> None:
        """Load an official T2T-ViT checkpoint (timm's ``custom_load`` hook: the same path for a
        downloaded URL and a local file).

        timm's :func:`~timm.models.load_state_dict` reads the file (allowing the ``argparse``
        namespace such training checkpoints carry, nothing else), prefers ``state_dict_ema`` and
        strips ``module.``; :func:`checkpoint_filter_fn` then maps it onto this model.

        Raises:
            RuntimeError: missing or unexpected keys, or shapes that do not fit.
        """
        state_dict = checkpoint_filter_fn(load_state_dict(checkpoint_path, use_ema=True), self)
        self.load_state_dict(state_dict, strict=strict)


def checkpoint_filter_fn(state_dict: dict[str, Any], model: T2TViT) -> dict[str, torch.Tensor]:
    """Map an official T2T-ViT checkpoint onto ``model``.

    - a whole training checkpoint is reduced to its ``state_dict_ema`` (else ``state_dict``);
    - the ``module.`` prefix of (Distributed)DataParallel is dropped;
    - the position table is resampled (bicubic, as the official transfer code) when the model's
      token grid differs from the checkpoint's (another input resolution);
    - the classifier is kept only when its shape fits (1,000 ImageNet classes); otherwise the
      model's fresh classifier is kept (fine-tuning to another dataset).

    Raises:
        RuntimeError: the checkpoint's first T2T layer does not take the model's input channels.
    """
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
            break
    out = {k.removeprefix("module."): v for k, v in state_dict.items()}
    own = model.state_dict()
    pos = out.get("pos_embed")
    if pos is not None and pos.shape != own["pos_embed"].shape:
        old = int(round(math.sqrt(pos.shape[1] - 1)))
        out["pos_embed"] = resample_abs_pos_embed(pos, list(model.tokens_to_token.grid_size), [old, old],
                                                  num_prefix_tokens=1, interpolation="bicubic", antialias=False)
    for key in ("head.weight", "head.bias"):
        if key in out and (key not in own or out[key].shape != own[key].shape):
            log.info("t2t_vit: checkpoint classifier %s %s does not fit %s; keeping a fresh classifier",
                     key, tuple(out[key].shape), tuple(own[key].shape) if key in own else None)
            out[key] = own[key]
    first = "tokens_to_token.attention1.kqv.weight"
    if first in out and out[first].shape != own[first].shape:
        raise RuntimeError(f"the checkpoint's T2T layer takes {out[first].shape[1] // 49} input channels, the model "
                           f"{own[first].shape[1] // 49}: fine-tune the published weights on 3-channel images")
    return out


def _cfg(file_name: str, **kwargs: Any) -> dict[str, Any]:
    return {
        "url": _URL + file_name, "custom_load": True,
        "num_classes": 1000, "input_size": (3, 224, 224), "fixed_input_size": True, "pool_size": None,
        "crop_pct": 0.9, "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "tokens_to_token.attention1.kqv", "classifier": "head",
        "license": "bsd-3-clause-clear", "paper_ids": "arXiv:2101.11986",
        "origin_url": "https://github.com/yitu-opensource/T2T-ViT", **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "t2t_vit_7.in1k": _cfg(WEIGHT_FILES["t2t_vit_7"]),
    "t2t_vit_14.in1k": _cfg(WEIGHT_FILES["t2t_vit_14"]),
})


def _create(variant: str, pretrained: bool, **kwargs: Any) -> T2TViT:
    return build_model_with_cfg(T2TViT, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **kwargs)


@register_model
def t2t_vit_7(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """T2T-ViT-7: Performer T2T, width 256, 7 blocks, 4 heads, MLP ratio 2 (4.3 M parameters;
    1.2 G Mul-Adds at 224 px counted with attention, see ``tests/test_t2t_vit.py``)."""
    args = dict(embed_dim=256, depth=7, num_heads=4, mlp_ratio=2.0)
    return _create("t2t_vit_7", pretrained, **{**args, **kwargs})


@register_model
def t2t_vit_14(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """T2T-ViT-14: Performer T2T, width 384, 14 blocks, 6 heads, MLP ratio 3 (21.5 M parameters;
    4.8 G Mul-Adds at 224 px)."""
    args = dict(embed_dim=384, depth=14, num_heads=6, mlp_ratio=3.0)
    return _create("t2t_vit_14", pretrained, **{**args, **kwargs})


class T2TViTExits(ViTExits):
    """Exits after every block of a T2T-ViT (K = depth; exit K is the backbone's classifier).

    Stem: the T2T module, the class token and the position table (charged to block 1). Block k:
    ``blocks[k-1]``. IM input after block k < K: the class token through the final LayerNorm
    (shared, frozen), ``[B, D]``; IM: ``nn.Linear(D, C)`` (``methods.md``, common setting; the
    JEI-DNN design). Head: final norm, classifier on the class token (charged to block K).
    """

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_embed(x)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.norm(h))


# Published ImageNet weights; on the paper's other datasets they are fine-tuned here as JEI-DNN did (the
# official transfer recipe: SGD, lr 0.05 for the classifier and 0.01x for the rest, 224 px, cosine over 60
# epochs, stochastic depth 0.1); on MNIST trained from scratch at 28 px (the module docstring argues it).
T2T_RECIPE = {"init": "pretrained", "optimizer": "sgd", "lr": 0.05, "backbone_lr_ratio": 0.01, "momentum": 0.9,
              "weight_decay": 5e-4, "epochs": 60, "batch_size": 64, "augment": "crop_flip", "drop_path_rate": 0.1,
              "input_cfg": {"crop_pct": 1.0}}
T2T_DATASET_RECIPES = {
    "svhn": {"augment": "crop"},  # digits: no flips
    "mnist": {"init": "scratch", "optimizer": "adamw", "lr": 1e-3, "backbone_lr_ratio": 1.0, "weight_decay": 0.05,
              "epochs": 20, "warmup_epochs": 1, "batch_size": 64, "augment": "crop", "drop_path_rate": 0.0,
              "input_cfg": {"input_size": [1, 28, 28], "crop_pct": 1.0, "interpolation": "bilinear",
                            "mean": [0.1307], "std": [0.3081]}},
}
for _name, _width, _depth in (("t2t_vit_7", 256, 7), ("t2t_vit_14", 384, 14)):
    register_backbone(BackboneSpec(
        name=_name, adapter=T2TViTExits, weights_file=WEIGHT_FILES[_name], pretrained_on="imagenet",
        description=f"T2T-ViT-{_depth} (Performer T2T, width {_width})",
        recipe=T2T_RECIPE, dataset_recipes=T2T_DATASET_RECIPES), aliases=(_name.replace("_", "-"),))
