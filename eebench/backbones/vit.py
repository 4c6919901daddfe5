"""ViT backbones: the exit adapter for timm's ``VisionTransformer`` and the small ``vit_digits``.

``vit_digits`` is the offline default backbone: a 6-block ViT over the 8×8 scikit-learn digits
(patch 2, 16 patches + class token, width 64, 4 heads). Its weights for the default recipe and
splits ship with the package (``weights/vit_digits-digits.safetensors``, 0.8 MB, checked against the
sha256 below): training depends on the CPU's kernels, and the committed digits results must
reproduce on every CPU (``docs/decisions.md`` R2). ``eebench backbone train --backbone vit_digits
--dataset digits`` trains them again; another recipe or split trains on first use (about 2 min). Its exits are
those of the generic timm adapter (:class:`~eebench.backbones.timm_generic.TimmExits`: one per
block, a Linear IM on the normed class token), which gives the same IM inputs, logits and costs
as :class:`ViTExits`, bit for bit; ``ViTExits`` stays the base of the T2T-ViT adapter.
"""
from __future__ import annotations

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from eebench.backbones import BackboneSpec, ShippedWeights, register_backbone
from eebench.backbones.base import ExitAdapter
from eebench.backbones.timm_generic import TimmExits

__all__ = ["ViTExits", "vit_digits"]


class ViTExits(ExitAdapter):
    """Exits after every transformer block (K = depth; exit K is the backbone's head).

    IM input after block k < K: the class token passed through the backbone's final norm
    (shared, frozen), ``[B, D]``; IM: ``nn.Linear(D, C)`` (``methods.md``, common setting).
    Works for any timm ``VisionTransformer`` with a class token.
    """

    def __init__(self, model: VisionTransformer):
        super().__init__(model)
        if getattr(model, "cls_token", None) is None:
            raise ValueError("ViTExits needs a ViT with a class token")
        self.num_blocks = len(model.blocks)
        self.im_dims = [model.embed_dim] * (self.num_blocks - 1)
        self.exits_doc = f"after each of the {self.num_blocks} blocks; IM = Linear on the normed class token"

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))

    def block(self, k: int, h: torch.Tensor) -> torch.Tensor:
        return self.model.blocks[k - 1](h)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.norm(h))

    def im_input(self, k: int, h: torch.Tensor) -> torch.Tensor:
        return self.model.norm(h[:, 0])

    def make_im(self, k: int, num_classes: int) -> nn.Module:
        return nn.Linear(self.im_dims[k - 1], num_classes)


default_cfgs = generate_default_cfgs({
    "vit_digits.untrained": {
        "num_classes": 10, "input_size": (1, 8, 8), "crop_pct": 1.0, "interpolation": "bilinear",
        "mean": (0.5,), "std": (0.5,), "first_conv": "patch_embed.proj", "classifier": "head",
    },
})


@register_model
def vit_digits(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT for 8×8 grayscale digits: patch 2, depth 6, width 64, 4 heads, MLP ratio 2 (0.2 M parameters)."""
    args = dict(img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=64, depth=6,
                num_heads=4, mlp_ratio=2.0, class_token=True, global_pool="token")
    return build_model_with_cfg(VisionTransformer, "vit_digits", pretrained, **{**args, **kwargs})


register_backbone(BackboneSpec(
    name="vit_digits", adapter=TimmExits, train_on_first_use=True, description="ViT depth 6, width 64 on 8x8 digits",
    shipped={"digits": ShippedWeights(
        file="vit_digits-digits.safetensors",
        sha256="4d0b5201e33e727d36bec96077921c003d50585a0ca76f698892daa952177ed2",
        split_key="c608eb3796e2d7d8", recipe_key="518831e46b",
        made_by="eebench backbone train --backbone vit_digits --dataset digits, AMD EPYC Zen 4, torch 2.14.1")},
    # one thread: the weights are the same on every machine of this CPU kind (docs/decisions.md, R1)
    recipe={"optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.05, "epochs": 100, "batch_size": 64,
            "augment": "none", "num_workers": 0, "num_threads": 1}))
