"""Differentiable branching (``methods.md`` §5).

Scardapane, Comminiello, Scarpiniti, Baccarelli & Uncini, "Differentiable Branching in Deep
Networks for Fast Inference", ICASSP 2020. No official code exists.

Each branch (exit) b < K has a gate λ_b = sigmoid(a_b), a_b = ``nn.Linear(D_b, 1)`` on the
branch's input (the IM input after block b), beside the IM's C logits. The network's soft output
is the product-form mixture

    ŷ = Σ_{b<K} λ_b Π_{j<b}(1 − λ_j) z_b + Π_{j<K}(1 − λ_j) z_K

(the backward recursion ŷ ← λ_b z_b + (1 − λ_b) ŷ from b = K−1 down to 1, starting at z_K), and
its soft cost C̄ is the same mixture of the normalised exit costs c_b. The loss is
CE(ŷ, y) + β·mean_n C̄_n; exit K is the frozen backbone classifier, so no CE(z_K, y) term.
One model per β of ``betas``. Test: exit at the first b with λ_b ≥ 0.5, else at K.

Warm-up: the JEI-DNN authors found this method unstable and gave it their warm-up
(Regol et al., ICLR 2024, rebuttal); this implementation does the same, exactly as ``methods/jei.py``:
the IMs are first trained alone with Σ_b (K+1−b)·ℓ_b for ``warmup_epochs``, then IMs and gates are
trained jointly, per β from the same warm-up, with SGD and a cosine schedule. The gate Mul-Adds
of exit b are those of its ``nn.Linear(D_b, 1)``.
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from eebench.costs import module_muladds
from eebench.features import SplitFeatures
from eebench.method import ExitMethod, ExitTask, FittedMethod, OperatingPoint, register_method
from eebench.training import (SGD_DEFAULTS, SGDSchedule, all_exit_logits, check_finite, im_logits, minibatches,
                              train_ims)
from methods.threshold import im_loss_weights

BETAS = [0.01, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0]


def mixture_weights(lam: torch.Tensor) -> torch.Tensor:
    """The product-form exit weights λ_b Π_{j<b}(1 − λ_j) for b < K and Π_{j<K}(1 − λ_j) for K.

    Args:
        lam: ``[B, K−1]`` gate values λ_b ∈ [0, 1].

    Returns:
        ``[B, K]`` non-negative weights summing to 1 over the exits.
    """
    survive = torch.cumprod(torch.cat([torch.ones_like(lam[:, :1]), 1.0 - lam], dim=1), dim=1)   # Π_{j<b}(1 − λ_j)
    return torch.cat([lam * survive[:, :-1], survive[:, -1:]], dim=1)


def soft_output(logits: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """ŷ = Σ_b weight_b z_b (Scardapane et al. 2020, eq. 4), ``[B, K, C]``, ``[B, K−1]`` → ``[B, C]``."""
    return (mixture_weights(lam)[:, :, None] * logits).sum(1)


def soft_cost(exit_costs: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """C̄ = Σ_b weight_b c_b (Scardapane et al. 2020, eq. 6), ``[K]``, ``[B, K−1]`` → ``[B]``."""
    return (mixture_weights(lam) * exit_costs[None, :]).sum(1)


def branching_loss(logits: torch.Tensor, lam: torch.Tensor, labels: torch.Tensor, exit_costs: torch.Tensor,
                   beta: float) -> torch.Tensor:
    """CE(ŷ, y) + β·mean_n C̄_n, averaged over the batch. Scalar."""
    return F.cross_entropy(soft_output(logits, lam), labels) + beta * soft_cost(exit_costs, lam).mean()


def exit_decision(lam: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Test rule: the first b with λ_b ≥ 0.5, else K. ``[B, K−1]`` → ``[B]`` int64, 0-based."""
    passed = torch.cat([lam >= threshold, torch.ones_like(lam[:, :1], dtype=torch.bool)], dim=1)
    return passed.float().argmax(1)


class BranchGates(nn.Module):
    """The K−1 gates: ``nn.Linear(D_b, 1)`` on each branch's input; K−1 tensors ``[B, D_b]`` →
    gate logits ``[B, K−1]`` (sigmoid gives λ)."""

    def __init__(self, in_dims: Sequence[int]):
        super().__init__()
        self.gates = nn.ModuleList(nn.Linear(d, 1) for d in in_dims)

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([gate(x) for gate, x in zip(self.gates, inputs)], dim=1)


class DiffBranchFitted(FittedMethod):
    """IMs and gates per β; one operating point per β."""

    def __init__(self, models: dict[float, tuple[nn.ModuleList, BranchGates]], gate_muladds: list[int]):
        self.models, self.gate_muladds = models, gate_muladds

    @torch.no_grad()
    def predict(self, split: SplitFeatures) -> list[OperatingPoint]:
        points = []
        for beta, (ims, gates) in self.models.items():
            ims.eval()
            lam = torch.sigmoid(gates(split.im_inputs))
            points.append(OperatingPoint({"beta": beta}, exit_decision(lam).numpy(),
                                         all_exit_logits(ims, split).softmax(-1), self.gate_muladds))
        return points


@register_method
class DiffBranch(ExitMethod):
    name = "diffbranch"
    aliases = ("differentiable-branching", "scardapane")
    paper = "Scardapane et al., ICASSP 2020 (Differentiable Branching)"
    parameters: dict[str, Any] = {**SGD_DEFAULTS, "betas": BETAS, "warmup_epochs": 5}
    grid = {"betas": [[b] for b in BETAS]}
    test_parameters = {"epochs": 4, "warmup_epochs": 2, "betas": [0.1, 1.0]}

    def fit(self, task: ExitTask, params: dict[str, Any], seed: int) -> DiffBranchFitted:
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        K = task.num_exits
        ims = task.make_ims()
        in_dims = [x.shape[1] for x in task.train.im_inputs]
        schedule = SGDSchedule.from_params(params)
        gate_muladds = [module_muladds(g, torch.zeros(1, d)) for g, d in zip(BranchGates(in_dims).gates, in_dims)]
        costs = torch.as_tensor(task.costs.exit_costs(gate_muladds), dtype=torch.float32)
        with tqdm(total=params["warmup_epochs"] + len(params["betas"]) * schedule.epochs,
                  desc="diffbranch", unit="epoch", leave=False) as bar:
            if params["warmup_epochs"] > 0:
                train_ims(ims, task.train, im_loss_weights("linear", K),
                          SGDSchedule.from_params(params, epochs=params["warmup_epochs"]), gen,
                          where="diffbranch: warm-up", progress=bar)
            models = {}
            for beta in params["betas"]:
                torch.manual_seed(seed)
                ims_beta, gates = copy.deepcopy(ims), BranchGates(in_dims)
                self._train_joint(ims_beta, gates, task.train, float(beta), costs, schedule, gen, bar)
                models[float(beta)] = (ims_beta, gates)
        return DiffBranchFitted(models, gate_muladds)

    @staticmethod
    def _train_joint(ims: nn.ModuleList, gates: BranchGates, train: SplitFeatures, beta: float, costs: torch.Tensor,
                     schedule: SGDSchedule, gen: torch.Generator, bar: tqdm) -> None:
        """IMs and gates together on CE(ŷ, y) + β·mean C̄ (SGD, cosine schedule)."""
        opt, sched = schedule.build([*ims.parameters(), *gates.parameters()],
                                    schedule.epochs * schedule.steps_per_epoch(train.n))
        ims.train()
        for epoch in range(schedule.epochs):
            for idx in minibatches(train.n, schedule.batch_size, gen):
                logits = torch.stack([*im_logits(ims, train, idx), train.logits[idx]], dim=1)
                lam = torch.sigmoid(gates([x[idx] for x in train.im_inputs]))
                loss = branching_loss(logits, lam, train.labels[idx], costs, beta)
                check_finite(loss, f"diffbranch (beta={beta}), epoch {epoch + 1}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            bar.update(1)
