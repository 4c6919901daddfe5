"""Confidence-threshold baseline: MSDNet's budgeted batch classification (``methods.md`` §1).

IMs are trained with Σ_k w_k ℓ_k (w_k = 1, or K+1−k scaled to mean 1 with ``loss_weights: linear``); for each
budget level q the thresholds come from the MSDNet search on ``val``; a sample exits at the first
exit whose max softmax reaches its threshold. Huang et al., "Multi-Scale Dense Networks for
Resource Efficient Image Classification", ICLR 2018.
"""
from __future__ import annotations

from typing import Any

import torch

from eebench.exit_policy import Q_GRID, ThresholdPolicy
from eebench.method import ExitMethod, ExitTask, register_method
from eebench.training import SGD_DEFAULTS, SGDSchedule, exit_probs, train_ims


def im_loss_weights(kind: str, num_exits: int) -> torch.Tensor:
    """IM loss weights ``[K−1]``: "uniform" → 1; "linear" → (K+1−k) / mean_j(K+1−j) for k = 1..K−1
    (JEI-DNN's warm-up weights, ``methods.md`` §6).

    The linear weights are scaled to mean 1 so that the learning rate means what it means for the
    uniform loss: each IM only sees its own term, so an unscaled weight K+1−k multiplies IM k's
    learning rate by up to K. On ResNet-56 with an exit after every block (K = 27) the unscaled
    weights left IMs 1–10 at chance after the warm-up (the first IM trained at 27× the learning
    rate); scaled, IMs 1–10 reach 41–64 % val accuracy after two epochs.

    Raises:
        ValueError: unknown ``kind``.
    """
    k = torch.arange(1, num_exits, dtype=torch.float32)
    if kind == "uniform":
        return torch.ones_like(k)
    if kind == "linear":
        w = num_exits + 1 - k
        return w / w.mean()
    raise ValueError(f"loss_weights must be 'uniform' or 'linear', got {kind!r}")


@register_method
class Threshold(ExitMethod):
    name = "threshold"
    aliases = ("msdnet", "confidence")
    paper = "Huang et al., ICLR 2018 (MSDNet)"
    parameters: dict[str, Any] = {**SGD_DEFAULTS, "loss_weights": "uniform", "q_grid": Q_GRID}
    grid = {"loss_weights": ["uniform", "linear"]}
    test_parameters = {"epochs": 2}

    def fit(self, task: ExitTask, params: dict[str, Any], seed: int) -> ThresholdPolicy:
        torch.manual_seed(seed)
        ims = task.make_ims()
        weights = im_loss_weights(params["loss_weights"], task.num_exits)
        train_ims(ims, task.train, weights, SGDSchedule.from_params(params),
                  torch.Generator().manual_seed(seed), where="threshold: IM training")
        return ThresholdPolicy(lambda split: exit_probs(ims, split), task.val, params["q_grid"])
