"""Confidence-threshold baseline: MSDNet's budgeted batch classification (``methods.md`` §1).

The IMs are the shared IM stage's (Σ_k ℓ_k, :mod:`eebench.harness.im_stage`); for each budget level q the
thresholds come from the MSDNet search on the policy split; a sample exits at the first exit
whose max softmax reaches its threshold. Huang et al., "Multi-Scale Dense Networks for Resource
Efficient Image Classification", ICLR 2018.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from eebench.method import (POSITIVE, Q_GRID, Each, ExitMethod, ExitTask, ThresholdPolicy, ims_policy,
                            register_method, unpack)


@register_method
class Threshold(ExitMethod):
    name = "threshold"
    aliases = ("msdnet", "confidence")
    paper = "Huang et al., ICLR 2018 (MSDNet)"
    parameters: dict[str, Any] = {"q_grid": Q_GRID}
    constraints = {"q_grid": Each(POSITIVE)}
    grid: dict[str, list[Any]] = {}
    test_parameters: dict[str, Any] = {}

    def fit(self, task: ExitTask, params: dict[str, Any], seed: int) -> ThresholdPolicy:
        return ims_policy(task.trained_ims(), task.policy, params["q_grid"])

    def restore(self, tensors: dict[str, torch.Tensor], settings: dict[str, Any],
                make_ims: Callable[[], nn.ModuleList]) -> ThresholdPolicy:
        return ims_policy(unpack(tensors, "ims", make_ims()), None, settings["q_grid"], tensors["thresholds"])
