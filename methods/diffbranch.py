"""Differentiable branching (``methods.md`` §5).

Scardapane, Comminiello, Scarpiniti, Baccarelli & Uncini, "Differentiable Branching in Deep
Networks for Fast Inference", ICASSP 2020. No official code exists.

Each branch (exit) b < K has a gate λ_b = sigmoid(a_b), where a_b is one extra output unit of the
branch's IM beside its C logits, sharing the IM's processing (its hidden layer, or its input for a
linear IM), as in the paper. In the paper each branch's output
f_b(x) is its class-probability vector (the branch losses and the entropy rule of its §2 are taken
on f_b directly), and the soft output is the recursion f̃_b = λ_b f_b + (1 − λ_b) f̃_{b+1}, a
convex combination of probability vectors, trained with the cross-entropy of f̃_1 and no loss of
the branches' own. In product form, with p_b = softmax(z_b):

    ŷ = Σ_{b<K} λ_b Π_{j<b}(1 − λ_j) p_b + Π_{j<K}(1 − λ_j) p_K,

and the soft cost C̄ is the same mixture of the normalised exit costs c_b. The loss is
−log ŷ_y + β·mean_n C̄_n; exit K is the frozen backbone classifier. Test: exit at the first b with
λ_b ≥ 0.5, else at K.

Training: the JEI-DNN authors found this method unstable and gave it their warm-up (Regol et al.,
ICLR 2024, rebuttal); here the IMs start, as JEI-DNN's do, from the shared IM stage
(:mod:`eebench.harness.im_stage`), and the gate units start at "continue" (weights 0, λ_b = ``gate_init``
for every input). Then IMs and gates train jointly, one model per β, all β side by side
(:class:`eebench.harness.training.StackedIMs`; SGD is elementwise, so this equals one run per β on the same
mini-batches): the IMs on ``train``, the gate units on the policy split (when that is ``train``,
one joint loss as in the paper). The default β grid has ``num_betas`` values: half log-spaced over
the prices at which the samples' exits move (:func:`beta_grid`, from val), trained first; the
other half placed where their mean val cost moves most between neighbours (:func:`refine_betas`). The gate Mul-Adds of exit b are those of
its extra unit. Departures and their measurements: ``docs/decisions.md``.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from eebench.method import (NON_NEGATIVE, OPEN_UNIT, POSITIVE, SGD_CONSTRAINTS, Each, ExitMethod, ExitRule, ExitTask,
                            FittedMethod, OperatingPoint, Range, SGDSchedule, SplitFeatures, StackedIMs, check_finite,
                            cycle_minibatches, eval_mode, im_logits, minibatches, module_muladds, pack, per_exit_ce,
                            register_method, unpack)

#: Quantile levels of the break-even prices the default β grid spans.
BETA_LEVELS = (0.1, 0.9)


def break_even_prices(losses: torch.Tensor, exit_costs: Sequence[float]) -> np.ndarray:
    """Each sample's break-even price of exiting at exit 1 rather than at exit K:
    (ℓ_1 − ℓ_K) / (c_K − c_1), nats per unit of normalised cost; ``[N, K]`` losses → ``[N]``.

    Raises:
        ValueError: exit costs that do not increase.
    """
    spread = float(exit_costs[-1]) - float(exit_costs[0])
    if spread <= 0:
        raise ValueError(f"exit costs must increase, got {list(exit_costs)}")
    return ((losses[:, 0] - losses[:, -1]) / spread).numpy()


def beta_grid(prices: np.ndarray, count: int, levels: tuple[float, float] = BETA_LEVELS) -> list[float]:
    """The default β grid: ``count`` values log-spaced between the ``levels`` quantiles of the
    positive break-even prices (:func:`break_even_prices`, measured on val), rounded to 4
    significant digits. At β = price a sample gains by exiting at exit 1, so the grid covers the
    prices at which the samples' exits move, densest where they move fastest.

    Raises:
        ValueError: ``count`` < 2, or fewer than two positive prices.
    """
    positive = np.asarray(prices, dtype=float)
    positive = positive[np.isfinite(positive) & (positive > 0)]
    if count < 2 or positive.size < 2:
        raise ValueError(f"beta_grid needs count >= 2 and two positive prices, got {count}, {positive.size}")
    lo, hi = np.quantile(positive, levels)
    return [float(f"{b:.4g}") for b in np.geomspace(lo, hi, count)]


def refine_betas(betas: Sequence[float], val_costs: Sequence[float], extra: int) -> list[float]:
    """``extra`` β values to add between consecutive values of a trained grid, given each one's mean
    cost on val: allotted one by one to the gap of largest val-cost difference per piece, each gap
    then split evenly in log β (rounded to 4 significant digits). Where the cost moves fastest the
    grid gets densest.

    Returns:
        the new values, in increasing order.
    """
    order = sorted(range(len(betas)), key=lambda i: betas[i])
    b = [float(betas[i]) for i in order]
    c = [float(val_costs[i]) for i in order]
    gaps = [abs(c[i + 1] - c[i]) for i in range(len(b) - 1)]
    pieces = [1] * len(gaps)
    for _ in range(extra if gaps else 0):
        j = max(range(len(gaps)), key=lambda i: (gaps[i] / pieces[i], -i))
        pieces[j] += 1
    return [float(f"{b[i] * (b[i + 1] / b[i]) ** (t / p):.4g}") for i, p in enumerate(pieces) for t in range(1, p)]


def mixture_weights(lam: torch.Tensor) -> torch.Tensor:
    """The product-form exit weights λ_b Π_{j<b}(1 − λ_j) for b < K and Π_{j<K}(1 − λ_j) for K.

    Args:
        lam: ``[..., K−1]`` gate values λ_b ∈ [0, 1].

    Returns:
        ``[..., K]`` non-negative weights summing to 1 over the exits.
    """
    survive = torch.cumprod(torch.cat([torch.ones_like(lam[..., :1]), 1.0 - lam], dim=-1), dim=-1)  # Π_{j<b}(1 − λ_j)
    return torch.cat([lam * survive[..., :-1], survive[..., -1:]], dim=-1)


def soft_output(probs: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """ŷ = Σ_b weight_b p_b (Scardapane et al. 2020, eq. 4): ``[..., K, C]`` probabilities,
    ``[..., K−1]`` gates → ``[..., C]`` probabilities."""
    return (mixture_weights(lam)[..., None] * probs).sum(-2)


def soft_cost(exit_costs: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """C̄ = Σ_b weight_b c_b (Scardapane et al. 2020, eq. 6), ``[K]``, ``[..., K−1]`` → ``[...]``."""
    return (mixture_weights(lam) * exit_costs).sum(-1)


def branching_loss(logits: torch.Tensor, lam: torch.Tensor, labels: torch.Tensor, exit_costs: torch.Tensor,
                   beta: float | torch.Tensor) -> torch.Tensor:
    """−mean_n log ŷ_{n,y_n} + β·mean_n C̄_n (Scardapane et al. 2020, eqs. 4–7), ŷ the mixture of
    the exits' softmax outputs.

    Args:
        logits: ``[..., B, K, C]`` logits of every exit.
        lam: ``[..., B, K−1]`` gate values.
        labels: ``[B]``.
        beta: β, a float or ``[...]`` (one per model).

    Returns:
        ``[...]`` (a scalar for one model).
    """
    y_hat = soft_output(logits.softmax(-1), lam)                                      # [..., B, C]
    p_label = y_hat.gather(-1, labels.expand(*y_hat.shape[:-1])[..., None])[..., 0]
    return -p_label.clamp_min(1e-12).log().mean(-1) + beta * soft_cost(exit_costs, lam).mean(-1)


def exit_decision(lam: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Test rule: the first b with λ_b ≥ 0.5, else K. ``[B, K−1]`` → ``[B]`` int64, 0-based."""
    passed = torch.cat([lam >= threshold, torch.ones_like(lam[:, :1], dtype=torch.bool)], dim=1)
    return passed.float().argmax(1)


class GatedIM(nn.Module):
    """An IM with a gate unit sharing its processing (Scardapane et al. 2020, §3: the gate is one more
    output of the branch): the IM's layers before its last ``nn.Linear`` (the body; nothing for a
    linear IM) feed both that Linear (the C logits) and ``gate``, an ``nn.Linear(h, 1)`` starting at
    weight 0 and bias logit(``init``), i.e. λ = ``init`` for every input. ``[B, D]`` → ``[B, C + 1]``.

    Raises:
        ValueError: the IM is neither an ``nn.Linear`` nor an ``nn.Sequential`` ending with one.
    """

    def __init__(self, im: nn.Module, init: float):
        super().__init__()
        if isinstance(im, nn.Linear):
            self.body, self.head = nn.Identity(), copy.deepcopy(im)
        elif isinstance(im, nn.Sequential) and isinstance(im[-1], nn.Linear):
            self.body, self.head = nn.Sequential(*copy.deepcopy(list(im)[:-1])), copy.deepcopy(im[-1])
        else:
            raise ValueError(f"differentiable branching needs IMs that end with an nn.Linear, got {type(im).__name__}")
        self.gate = nn.Linear(self.head.in_features, 1)
        with torch.no_grad():
            self.gate.weight.zero_()
            self.gate.bias.fill_(math.log(init / (1.0 - init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        return torch.cat([self.head(h), self.gate(h)], -1)


class DiffBranchRule(ExitRule):
    """Exit at b when λ_b = sigmoid(gate output of gated IM b) ≥ 0.5 (:func:`exit_decision`, exit by exit)."""

    def __init__(self, ims: nn.ModuleList):
        self.ims, self.modules = ims, [ims]

    def at_exit(self, k: int, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, torch.Tensor, Any]:
        out = self.ims[k - 1](x)                                                          # [B, C + 1]
        return torch.sigmoid(out[:, -1]) >= 0.5, out[:, :-1].softmax(-1), None


class DiffBranchFitted(FittedMethod):
    """Gated IMs per β; one operating point per β."""

    def __init__(self, betas: list[float], ims: list[nn.ModuleList], gate_muladds: list[int]):
        self.betas, self.ims, self.gate_muladds = betas, ims, gate_muladds

    @torch.no_grad()
    def predict(self, split: SplitFeatures) -> list[OperatingPoint]:
        points = []
        for beta, ims in zip(self.betas, self.ims):
            with eval_mode(ims):
                out = torch.stack(im_logits(ims, split), 1)                                 # [N, K−1, C+1]
            logits = torch.cat([out[..., :-1], split.logits[:, None]], 1).softmax(-1)
            points.append(OperatingPoint({"beta": beta}, exit_decision(torch.sigmoid(out[..., -1])).numpy(), logits,
                                         self.gate_muladds))
        return points

    def exit_rules(self) -> list[ExitRule]:
        """One :class:`DiffBranchRule` per β."""
        return [DiffBranchRule(ims) for ims in self.ims]

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The gated IMs of every β (``ims_<m>``)."""
        return pack(**{f"ims_{m}": ims for m, ims in enumerate(self.ims)}), {"betas": self.betas,
                                                                              "gate_muladds": self.gate_muladds}


@register_method
class DiffBranch(ExitMethod):
    name = "diffbranch"
    aliases = ("differentiable-branching", "scardapane")
    paper = "Scardapane et al., ICASSP 2020 (Differentiable Branching)"
    parameters: dict[str, Any] = {
        "lr": 0.04, "momentum": 0.9, "weight_decay": 5e-4, "lr_min": 2e-4,   # the shared IM stage's SGD
        "batch_size": 256,
        "epochs": 1,              # of the joint phase, after the shared IM stage ...
        "min_steps": 50,          # ... or as many as make this many SGD steps
        "betas": [],              # empty: num_betas log-spaced over the break-even prices (beta_grid)
        "num_betas": 32,
        "gate_init": 0.02,        # every gate's starting λ ("continue")
        "gate_lr": 0.4,           # of the gate units: 10 x lr, the ratio of JEI-DNN's gate_lr
    }
    constraints = {**SGD_CONSTRAINTS, "min_steps": NON_NEGATIVE, "betas": Each(POSITIVE, min_len=0),
                   "num_betas": Range(2), "gate_init": OPEN_UNIT, "gate_lr": POSITIVE}
    grid = {"num_betas": [16, 32]}
    test_parameters = {"num_betas": 4}

    def fit(self, task: ExitTask, params: dict[str, Any], seed: int) -> DiffBranchFitted:
        start = nn.ModuleList(GatedIM(im, float(params["gate_init"])) for im in task.trained_ims())
        gate_muladds = [module_muladds(im.gate, torch.zeros(1, im.gate.in_features)) for im in start]
        costs = torch.as_tensor(task.costs.exit_costs(gate_muladds), dtype=torch.float32)
        schedule = SGDSchedule.from_params(params)
        schedule.epochs = max(schedule.epochs, math.ceil(int(params["min_steps"]) / schedule.steps_per_epoch(task.train.n)))

        def train(betas: list[float]) -> DiffBranchFitted:
            torch.manual_seed(seed)
            ims = StackedIMs(start, len(betas))
            with task.progress("diffbranch", schedule.epochs) as bar:
                self._train_joint(ims, task, torch.tensor(betas), costs, schedule, float(params["gate_lr"]),
                                  torch.Generator().manual_seed(seed), bar)
            return DiffBranchFitted(betas, [ims.unstack(m, start) for m in range(len(betas))], gate_muladds)

        if params["betas"]:
            return train([float(b) for b in params["betas"]])
        total = int(params["num_betas"])
        first = train(beta_grid(break_even_prices(self._val_losses(start, task.val), costs.tolist()), (total + 1) // 2))
        val_costs = [float(costs[p.exit_index].mean()) for p in first.predict(task.val)]
        second = train(refine_betas(first.betas, val_costs, total - len(first.betas)))
        order = sorted(range(total), key=lambda i: [*first.betas, *second.betas][i])
        merged = [*zip(first.betas, first.ims), *zip(second.betas, second.ims)]
        return DiffBranchFitted([merged[i][0] for i in order], [merged[i][1] for i in order], gate_muladds)

    def restore(self, tensors: dict[str, torch.Tensor], settings: dict[str, Any],
                make_ims: Callable[[], nn.ModuleList]) -> DiffBranchFitted:
        ims = [unpack(tensors, f"ims_{m}", nn.ModuleList(GatedIM(im, 0.5) for im in make_ims()))
               for m in range(len(settings["betas"]))]
        return DiffBranchFitted(list(settings["betas"]), ims, list(settings["gate_muladds"]))

    @staticmethod
    @torch.no_grad()
    def _val_losses(ims: nn.ModuleList, val: SplitFeatures) -> torch.Tensor:
        """Per-exit cross-entropies on ``val``, ``[N, K]`` (the gate units left out)."""
        with eval_mode(ims):
            z = torch.stack(im_logits(ims, val), 1)[..., :-1]
        return per_exit_ce(torch.cat([z, val.logits[:, None]], 1), val.labels)

    @staticmethod
    def _train_joint(ims: StackedIMs, task: ExitTask, betas: torch.Tensor, costs: torch.Tensor,
                     schedule: SGDSchedule, gate_lr: float, gen: torch.Generator, bar: Any) -> None:
        """Gated IMs of every β on −log ŷ_y + β·mean C̄ (SGD, cosine schedule). On separate splits
        the IMs learn from mini-batches of ``train`` (the gates' λ taken without gradient) and the
        gate units from mini-batches of the policy split (the logits taken without gradient, the
        gate units' parameters only). The gate units learn at ``gate_lr``."""
        train, policy = task.train, task.policy
        joint = policy is train
        gate_params = [p for name, p in zip(ims.names, ims.params) if ".gate." in name]
        im_params = [p for name, p in zip(ims.names, ims.params) if ".gate." not in name]
        opt, sched = schedule.build([{"params": im_params}, {"params": gate_params, "lr": gate_lr}],
                                    schedule.epochs * schedule.steps_per_epoch(train.n))
        policy_batches = None if joint else cycle_minibatches(policy.n, schedule.batch_size, gen)

        def loss_on(split: SplitFeatures, idx: torch.Tensor, logits_grad: bool, gate_grad: bool) -> torch.Tensor:
            out = ims(split.rows(idx))                                                     # [M, B, K−1, C+1]
            z, a = out[..., :-1], out[..., -1]
            z = z if logits_grad else z.detach()
            lam = torch.sigmoid(a if gate_grad else a.detach())
            final = split.logits[idx].expand(z.shape[0], -1, -1)[:, :, None]
            return branching_loss(torch.cat([z, final], 2), lam, split.labels[idx], costs, betas).sum()

        for epoch in range(schedule.epochs):
            for idx in minibatches(train.n, schedule.batch_size, gen):
                opt.zero_grad(set_to_none=True)
                if joint:
                    loss = loss_on(train, idx, True, True)
                    check_finite(loss, f"diffbranch, epoch {epoch + 1}")
                    loss.backward()
                else:
                    loss = loss_on(train, idx, True, False)
                    check_finite(loss, f"diffbranch, epoch {epoch + 1}")
                    loss.backward()
                    gate_loss = loss_on(policy, next(policy_batches), False, True)
                    check_finite(gate_loss, f"diffbranch, epoch {epoch + 1}")
                    for p, g in zip(gate_params, torch.autograd.grad(gate_loss, gate_params)):
                        p.grad = g
                opt.step()
                sched.step()
            bar.update(1)

