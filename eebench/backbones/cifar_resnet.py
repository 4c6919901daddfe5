"""The original CIFAR ResNet (He et al., CVPR 2016, §4.2), option A shortcuts, registered with timm.

``cifar_resnet20``, ``cifar_resnet32`` and ``cifar_resnet56``: conv3x3(16) → three stages of n basic
blocks (16, 32, 64 channels; strides 1, 2, 2) → global average pool → linear. n = 3, 5 and 9. The
option-A shortcut subsamples by 2 and zero-pads channels, so it has no parameters. ResNet-32 has no
published checkpoint here: it is the long-tail backbone, trained from scratch on CIFAR-10-LT as in
LDAM (Cao et al., NeurIPS 2019).

``pretrained=True`` loads the published CIFAR-10 checkpoints of akamaster/pytorch_resnet_cifar10
(BSD-2-Clause) through :func:`checkpoint_filter_fn`: from their public URL, or from a local file
given by ``pretrained_cfg_overlay=dict(file=...)`` (the harness does this for ``--weights-dir``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from eebench.backbones import BackboneSpec, register_backbone
from eebench.backbones.base import ExitAdapter, MLPExit

__all__ = ["CifarResNet", "CifarResNetExits", "checkpoint_filter_fn"]


class BasicBlock(nn.Module):
    """3×3 conv → BN → ReLU → 3×3 conv → BN, plus the option-A shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = planes - in_planes if (stride != 1 or in_planes != planes) else 0
        self.stride = stride

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if not self.pad:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet-(6n+2). Input ``[B, 3, 32, 32]`` normalised RGB → logits ``[B, num_classes]``."""

    def __init__(self, depth: int = 56, num_classes: int = 10, in_chans: int = 3, **kwargs):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        planes, layers = 16, []
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(planes, width, stride if i == 0 else 1))
                planes = width
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.num_features = self.head_hidden_size = 64
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn1(self.conv1(x)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer3(self.layer2(self.layer1(self.forward_stem(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: dict, model: nn.Module | None = None) -> dict:
    """Map akamaster's keys to this model's: drop ``module.`` (DataParallel), ``linear`` → ``fc``."""
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if key.startswith("linear."):
            key = "fc." + key[len("linear."):]
        out[key] = value
    return out


def exit_positions(blocks_per_stage: int, exits_per_stage: int = 3) -> list[int]:
    """Where the exits of one stage sit: after blocks round(n·j / e) for j = 1..e (1-based, deduplicated).

    The last is always the stage's end. n = 3 (ResNet-20) gives [1, 2, 3]: an exit after every
    block; n = 9 (ResNet-56) gives [3, 6, 9]: after every third block.

    Raises:
        ValueError: ``exits_per_stage`` < 1.
    """
    if exits_per_stage < 1:
        raise ValueError(f"exits_per_stage must be >= 1, got {exits_per_stage}")
    return sorted({max(1, round(blocks_per_stage * j / exits_per_stage)) for j in range(1, exits_per_stage + 1)})


class CifarResNetExits(ExitAdapter):
    """Three exits per stage, evenly spaced, the last at the stage's end: K = 9 (exit K is the
    backbone's classifier). On ResNet-20 that is an exit after every residual block; on ResNet-56
    one after every third (blocks 3, 6, …, 27); the adapter's "block" k is the run of residual
    blocks between exits k−1 and k.

    Why 9 exits and not one per block: ``docs/decisions.md`` M5.

    IM input after exit k < K: the last block's output average-pooled to ``pool × pool`` and
    flattened, ``D_k = channels_k · pool²``; IM: one hidden layer of ``hidden`` units
    (:class:`MLPExit`), the IM that ``../shared/docs/design.md`` measured against a linear one.
    """

    def __init__(self, model: CifarResNet, pool: int = 4, hidden: int = 256, exits_per_stage: int = 3):
        super().__init__(model)
        self._segments: list[nn.Sequential] = []      # a plain list: the blocks stay registered under model only
        after, offset = [], 0                           # 1-based index of the residual block before each exit
        for stage in (model.layer1, model.layer2, model.layer3):
            start = 0
            for end in exit_positions(len(stage), exits_per_stage):
                self._segments.append(stage[start:end])
                after.append(offset + end)
                start = end
            offset += len(stage)
        self.num_blocks = len(self._segments)
        self.pool, self.hidden = pool, hidden
        self.im_dims = [seg[-1].conv2.out_channels * pool * pool for seg in self._segments[:-1]]
        self.exits_doc = (f"after residual blocks {', '.join(map(str, after))} of {offset} ({exits_per_stage} per stage); "
                          f"IM = MLP({hidden}) on the block output average-pooled to {pool}x{pool}")

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_stem(x)

    def block(self, k: int, h: torch.Tensor) -> torch.Tensor:
        return self._segments[k - 1](h)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(h)

    def im_input(self, k: int, h: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(h, self.pool).flatten(1)

    def make_im(self, k: int, num_classes: int) -> nn.Module:
        return MLPExit(self.im_dims[k - 1], self.hidden, num_classes)


_URL = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"


#: Local file names of the published checkpoints (under ``--weights-dir`` / ``$EEBENCH_WEIGHTS_DIR``).
WEIGHT_FILES = {"cifar_resnet20": "cifar10_resnet20-12fca82f.th", "cifar_resnet56": "cifar10_resnet56-4bfd9763.th"}


def _cfg(file_name: str, **kwargs) -> dict:
    return {
        "url": _URL + file_name.removeprefix("cifar10_"),
        "num_classes": 10, "input_size": (3, 32, 32), "pool_size": None, "crop_pct": 1.0,
        "interpolation": "bilinear", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
        "first_conv": "conv1", "classifier": "fc", "license": "bsd-2-clause",
        "paper_ids": "arXiv:1512.03385", **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "cifar_resnet20.akamaster_cifar10": _cfg(WEIGHT_FILES["cifar_resnet20"]),
    "cifar_resnet56.akamaster_cifar10": _cfg(WEIGHT_FILES["cifar_resnet56"]),
    "cifar_resnet32.untrained": _cfg("", url=None),
})


def _create(variant: str, depth: int, pretrained: bool, **kwargs) -> CifarResNet:
    return build_model_with_cfg(CifarResNet, variant, pretrained, depth=depth,
                                pretrained_filter_fn=checkpoint_filter_fn, **kwargs)


@register_model
def cifar_resnet20(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-20 (0.27 M parameters, 41 M Mul-Adds at 32 px)."""
    return _create("cifar_resnet20", 20, pretrained, **kwargs)


@register_model
def cifar_resnet32(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-32 (0.46 M parameters, 69 M Mul-Adds at 32 px); no published weights."""
    return _create("cifar_resnet32", 32, pretrained, **kwargs)


@register_model
def cifar_resnet56(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-56 (0.85 M parameters, 126 M Mul-Adds at 32 px)."""
    return _create("cifar_resnet56", 56, pretrained, **kwargs)


#: CIFAR-10-LT (LDAM's setting): from scratch on the long-tailed train split, SGD lr 0.1, weight decay
#: 2e-4, batch 128, 5 warm-up epochs, then cosine over 200 epochs (LDAM steps the rate down at 160 and
#: 180): docs/decisions.md B4. ResNet-20 is the default backbone there (ResNet-32 takes 8 h here).
LONG_TAIL_RECIPE = {"epochs": 200, "weight_decay": 2e-4, "warmup_epochs": 5}
_SCRATCH = {"epochs": 30, "lr": 0.1, "weight_decay": 1e-4, "batch_size": 128, "augment": "crop_flip"}

for _depth in (20, 56):
    register_backbone(BackboneSpec(
        name=f"cifar_resnet{_depth}", adapter=CifarResNetExits, description=f"CIFAR ResNet-{_depth} (option A)",
        weights_file=WEIGHT_FILES[f"cifar_resnet{_depth}"], pretrained_on="cifar10", recipe=dict(_SCRATCH),
        dataset_recipes={"cifar10-lt": dict(LONG_TAIL_RECIPE)}), aliases=(f"resnet{_depth}",))
register_backbone(BackboneSpec(
    name="cifar_resnet32", adapter=CifarResNetExits, description="CIFAR ResNet-32 (option A), trained here",
    recipe=dict(_SCRATCH), dataset_recipes={"cifar10-lt": dict(LONG_TAIL_RECIPE)}), aliases=("resnet32",))
