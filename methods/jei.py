"""JEI-DNN: jointly-learned exit and inference (``methods.md`` §6).

Regol, Chataoui & Coates, "Jointly-Learned Exit and Inference for a Dynamic Neural Network",
ICLR 2024 (``../shared/papers/``). Gate l < K is ``nn.Linear(4, 1)`` on four statistics of the IM's
softmax, taken without gradient to the IM; g_l = sigmoid(gate). The exit distribution is the
constrained sum P(G=l|x) = max(0, min(g_l, 1 − Σ_{j<l} g_j)), P(G=K|x) = 1 − Σ_{l<K} P(G=l|x).

Training: the IMs start from the shared IM stage (:mod:`eebench.harness.im_stage`: Σ_l ℓ_l until val
stalls, in place of the paper's warm-up with weights K+1−l), then, per λ, alternating phases of
``alternate_every`` mini-batches, gate phase first (the bi-level problem of the paper, §4):

- gate phase (outer problem, surrogate targets of §4.2), on mini-batches of the policy split:
  C_l = ℓ_l + λ·c_l, l* = argmin_l C_l, t_l = 1[l ≥ l*] for l < K, loss BCE(g_l, t_l) with the
  positive class weighted by min(#neg/#pos, ``pos_weight_cap``), counted on ``val`` at the start
  of each epoch;
- IM phase (inner problem), on mini-batches of ``train``: Σ_l P(G=l|x)·ℓ_l with P detached
  (``im_loss: weighted``), or the uniform mean of ℓ_l that the official code reduces to
  (``im_loss: uniform``, the default, chosen on val).

With ``im_loss: uniform`` the IM phase depends on neither λ nor the gates, so every λ shares one
IM trajectory and the gates of all λ train side by side on it (the same updates as one run per λ
with the same mini-batches). With ``weighted`` each λ trains its own IMs.

Test rule: e_l = P(G=l) / (1 − Σ_{j<l} P(G=j)); exit at the first l with e_l ≥ 0.5, else K.

Departures from ``methods.md`` (``gate_lr`` 0.1, ``pos_weight_cap`` 1, the warm-up, the λ grid) and
the measurements behind them: ``docs/decisions.md``.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from eebench.method import (AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, SGD_CONSTRAINTS, SGD_DEFAULTS, Each, ExitMethod,
                            ExitRule, ExitTask, FittedMethod, OneOf, OperatingPoint, SGDSchedule, SplitFeatures,
                            StackedIMs, check_finite, cycle_minibatches, eval_mode, im_logits, minibatches,
                            module_muladds, pack, per_exit_ce, register_method, unpack)

#: methods.md's grid (0.01 … 5) extended at both ends, so that every setting has points near cost 1 and
#: near its first exit's cost (docs/decisions.md).
LAMBDAS = [0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0]


def gate_features(logits: torch.Tensor) -> torch.Tensor:
    """The gate's four statistics of an IM's output (JEI-DNN §5, "gate design").

    Args:
        logits: ``[..., C]`` IM logits z_l.

    Returns:
        ``[..., 4]``: max p, entropy H(p) (nats), margin p_(1) − p_(2), and the entropy of
        softmax(2 z) (temperature 0.5), with p = softmax(z).
    """
    p = logits.softmax(-1)
    top2 = p.topk(2, dim=-1).values
    entropy = -(p * p.clamp_min(1e-12).log()).sum(-1)
    p_sharp = (2.0 * logits).softmax(-1)
    entropy_sharp = -(p_sharp * p_sharp.clamp_min(1e-12).log()).sum(-1)
    return torch.stack([top2[..., 0], entropy, top2[..., 0] - top2[..., 1], entropy_sharp], dim=-1)


def exit_distribution(g: torch.Tensor) -> torch.Tensor:
    """P(G=l|x) from the gate outputs (JEI-DNN eq. 2, the constrained sum).

    Args:
        g: ``[B, K−1]`` gate probabilities g_l ∈ [0, 1].

    Returns:
        ``[B, K]``: P_l = max(0, min(g_l, 1 − Σ_{j<l} g_j)) for l < K, and P_K = 1 − Σ_{l<K} P_l.
    """
    before = g.cumsum(-1) - g
    p = torch.minimum(g, 1.0 - before).clamp_min(0.0)
    return torch.cat([p, 1.0 - p.sum(-1, keepdim=True)], dim=-1)


def exit_decision(P: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """JEI-DNN's inference rule: the first l with e_l = P_l / (1 − Σ_{j<l} P_j) ≥ 0.5, else K.

    Args:
        P: ``[B, K]`` exit distribution.

    Returns:
        ``[B]`` int64 exits, 0-based (K−1 is the last). Where 1 − Σ_{j<l} P_j ≤ 1e-12 (all mass
        spent), e_l counts as 1.
    """
    denom = 1.0 - (P.cumsum(-1) - P)
    e = torch.where(denom > 1e-12, P / denom.clamp_min(1e-12), torch.ones_like(P))
    e[:, -1] = 1.0
    return (e >= threshold).float().argmax(-1)


def gate_targets(losses: torch.Tensor, exit_costs: torch.Tensor, lam: float) -> torch.Tensor:
    """Surrogate binary targets of the gates (JEI-DNN §4.2).

    Args:
        losses: ``[B, K]`` per-exit cross-entropies ℓ_l (exit K included).
        exit_costs: ``[K]`` normalised costs c_l.
        lam: λ, the price of one unit of normalised cost.

    Returns:
        ``[B, K−1]`` float: t_l = 1[l ≥ l*] with l* = argmin_l (ℓ_l + λ·c_l).
    """
    lstar = (losses + lam * exit_costs[None, :]).argmin(-1, keepdim=True)
    exits = torch.arange(losses.shape[1] - 1, device=losses.device)[None, :]
    return (exits >= lstar).float()


class JEIGates(nn.Module):
    """The K−1 gates of M models side by side: gate (m, l) is an ``nn.Linear(4, 1)`` on
    :func:`gate_features` of a detached IM output; all M models start from the same initialisation.

    Args:
        num_exits: K.
        models: M.
    """

    def __init__(self, num_exits: int, models: int = 1):
        super().__init__()
        one = nn.Linear(4, num_exits - 1)      # row l: the weights of gate l, with nn.Linear's initialisation
        self.weight = nn.Parameter(one.weight.detach().expand(models, -1, -1).clone())   # [M, K−1, 4]
        self.bias = nn.Parameter(one.bias.detach().expand(models, -1).clone())           # [M, K−1]

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """IM logits ``[M or 1, B, K−1, C]`` (one set per model, or one set for all) → gate logits
        ``[M, B, K−1]`` (sigmoid gives g)."""
        feats = gate_features(logits.detach())                                          # [M or 1, B, K−1, 4]
        return torch.einsum("mblf,mlf->mbl", feats.expand(self.weight.shape[0], -1, -1, -1), self.weight) \
            + self.bias[:, None]

    def muladds(self) -> list[int]:
        """Mul-Adds of gate l < K, an ``nn.Linear(4, 1)`` (its input statistics are not counted)."""
        return [module_muladds(nn.Linear(4, 1), torch.zeros(1, 4))] * self.weight.shape[1]


def im_outputs(ims: nn.ModuleList | StackedIMs, split: SplitFeatures, idx: torch.Tensor | slice = slice(None)
               ) -> torch.Tensor:
    """The IMs' logits on rows ``idx``: ``[1, B, K−1, C]`` for one set of IMs shared by every λ,
    ``[M, B, K−1, C]`` for one set per λ."""
    if isinstance(ims, StackedIMs):
        return ims(split.rows(idx))
    return torch.stack(im_logits(ims, split, idx), 1)[None]


def exit_ce(z: torch.Tensor, split: SplitFeatures, idx: torch.Tensor | slice = slice(None)) -> torch.Tensor:
    """ℓ_l of every exit: IM logits ``[M, B, K−1, C]`` and the frozen classifier → ``[M, B, K]``."""
    final = split.logits[idx].expand(z.shape[0], -1, -1)[:, :, None]
    logits = torch.cat([z, final], 2)
    M, B, K, C = logits.shape
    return per_exit_ce(logits.reshape(M * B, K, C), split.labels[idx].repeat(M)).view(M, B, K)


class JEIRule(ExitRule):
    """JEI-DNN's inference rule exit by exit for λ number ``m``: at exit l, g_l from the gate on IM l's
    output, P_l (eq. 2) from g_1..g_l, exit where e_l ≥ 0.5 (:func:`exit_decision`). The state is
    g_1..g_{l−1}, ``[B, l−1]``."""

    def __init__(self, ims: nn.ModuleList | StackedIMs, gates: JEIGates, m: int):
        self.ims, self.gates, self.m, self.modules = ims, gates, m, [ims, gates]

    def at_exit(self, k: int, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, torch.Tensor, Any]:
        z = self.ims.im(self.m, k, x) if isinstance(self.ims, StackedIMs) else self.ims[k - 1](x)     # [B, C]
        w, b = self.gates.weight[self.m, k - 1], self.gates.bias[self.m, k - 1]
        g = torch.sigmoid(torch.einsum("bf,f->b", gate_features(z), w) + b)[:, None]
        g = g if state is None else torch.cat([state, g], 1)                                          # [B, k]
        P = exit_distribution(g)[:, :k]
        return exit_decision(torch.cat([P, torch.zeros_like(P[:, :1])], 1)) == k - 1, z.softmax(-1), g


class JEIFitted(FittedMethod):
    """The IMs (shared by every λ, or one set per λ) and the gates of each λ; one operating point per λ."""

    def __init__(self, lams: list[float], ims: nn.ModuleList | StackedIMs, gates: JEIGates, gate_muladds: list[int]):
        self.lams, self.ims, self.gates, self.gate_muladds = lams, ims, gates, gate_muladds

    @torch.no_grad()
    def predict(self, split: SplitFeatures) -> list[OperatingPoint]:
        with eval_mode([self.ims]):
            z = im_outputs(self.ims, split)                                               # [M or 1, N, K−1, C]
        g = torch.sigmoid(self.gates(z))                                                  # [M, N, K−1]
        probs = torch.cat([z, split.logits.expand(z.shape[0], -1, -1)[:, :, None]], 2).softmax(-1)
        return [OperatingPoint({"lambda": lam}, exit_decision(exit_distribution(g[m])).numpy(),
                               probs[m if probs.shape[0] > 1 else 0], self.gate_muladds)
                for m, lam in enumerate(self.lams)]

    def exit_rules(self) -> list[ExitRule]:
        """One :class:`JEIRule` per λ."""
        return [JEIRule(self.ims, self.gates, m) for m in range(len(self.lams))]

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The IMs (one set, or the M stacked sets of ``im_loss: weighted``) and the gates of every λ."""
        stacked = isinstance(self.ims, StackedIMs)
        return pack(ims=self.ims, gates=self.gates), {"lambdas": self.lams, "stacked_ims": stacked,
                                                      "gate_muladds": self.gate_muladds}


@register_method
class JEI(ExitMethod):
    name = "jei"
    aliases = ("jei-dnn", "jeidnn")
    paper = "Regol, Chataoui & Coates, ICLR 2024 (JEI-DNN)"
    parameters: dict[str, Any] = {
        **SGD_DEFAULTS,
        "lambdas": LAMBDAS,        # one operating point per λ
        "im_loss": "uniform",      # weighted | uniform; chosen on val (docs/decisions.md)
        "alternate_every": 200,    # mini-batches per phase, gate phase first
        "pos_weight_cap": 1.0,     # methods.md: 5 (docs/decisions.md)
        "gate_lr": 0.1,            # methods.md: the IMs' lr, 0.01 (docs/decisions.md)
    }
    constraints = {**SGD_CONSTRAINTS, "lambdas": Each(NON_NEGATIVE), "im_loss": OneOf(("weighted", "uniform")),
                   "alternate_every": AT_LEAST_ONE, "pos_weight_cap": POSITIVE, "gate_lr": POSITIVE}
    grid = {"im_loss": ["weighted", "uniform"], "pos_weight_cap": [1.0, 5.0]}
    test_parameters = {"epochs": 4, "lambdas": [0.1, 1.0]}

    def fit(self, task: ExitTask, params: dict[str, Any], seed: int) -> JEIFitted:
        K = task.num_exits
        lams = [float(lam) for lam in params["lambdas"]]
        gate_muladds = JEIGates(K).muladds()
        costs = torch.as_tensor(task.costs.exit_costs(gate_muladds), dtype=torch.float32)
        schedule = SGDSchedule.from_params(params)
        start = task.trained_ims()
        torch.manual_seed(seed)
        # uniform: the IM loss depends on neither λ nor the gates, one IM trajectory serves every λ
        ims = copy.deepcopy(start) if params["im_loss"] == "uniform" else StackedIMs(start, len(lams))
        gates = JEIGates(K, len(lams))
        with task.progress("jei", schedule.epochs) as bar:
            self._train_joint(ims, gates, task, lams, costs, params, schedule, torch.Generator().manual_seed(seed), bar)
        return JEIFitted(lams, ims, gates, gate_muladds)

    def restore(self, tensors: dict[str, torch.Tensor], settings: dict[str, Any],
                make_ims: Callable[[], nn.ModuleList]) -> JEIFitted:
        lams, fresh = list(settings["lambdas"]), make_ims()
        ims = unpack(tensors, "ims", StackedIMs(fresh, len(lams)) if settings["stacked_ims"] else fresh)
        gates = unpack(tensors, "gates", JEIGates(len(fresh) + 1, len(lams)))
        return JEIFitted(lams, ims, gates, list(settings["gate_muladds"]))

    @staticmethod
    @torch.no_grad()
    def _pos_weights(ims: nn.ModuleList | StackedIMs, val: SplitFeatures, lams: list[float], costs: torch.Tensor,
                     cap: float) -> torch.Tensor:
        """min(#neg / #pos, cap) of the gate targets on ``val`` (pooled over gates), per λ: ``[M]``."""
        with eval_mode([ims]):
            ce = exit_ce(im_outputs(ims, val), val)
        out = []
        for m, lam in enumerate(lams):
            t = gate_targets(ce[m if ce.shape[0] > 1 else 0], costs, lam)
            pos = float(t.sum())
            out.append(cap if pos == 0 else min((t.numel() - pos) / pos, cap))
        return torch.tensor(out)

    def _train_joint(self, ims: nn.ModuleList | StackedIMs, gates: JEIGates, task: ExitTask, lams: list[float],
                     costs: torch.Tensor, params: dict[str, Any], schedule: SGDSchedule, gen: torch.Generator,
                     bar: Any) -> None:
        """The alternating phases, the gates of every λ side by side (the IMs shared under ``uniform``,
        one set per λ under ``weighted``: each λ's updates are those of a run of its own)."""
        train, policy = task.train, task.policy
        total = schedule.epochs * schedule.steps_per_epoch(train.n)
        every = params["alternate_every"]
        gate_steps = sum((s // every) % 2 == 0 for s in range(total))
        # each optimiser's cosine runs over the steps of its own phase
        opt_im, sched_im = schedule.build(ims.parameters(), total - gate_steps)
        gate_schedule = dataclasses.replace(schedule, lr=float(params["gate_lr"]),
                                            lr_min=min(schedule.lr_min, float(params["gate_lr"])))
        opt_gate, sched_gate = gate_schedule.build(gates.parameters(), gate_steps)
        policy_batches = cycle_minibatches(policy.n, schedule.batch_size, gen)
        step = 0
        for epoch in range(schedule.epochs):
            pos_weight = self._pos_weights(ims, task.val, lams, costs, params["pos_weight_cap"])[:, None, None]
            ims.train()
            for idx in minibatches(train.n, schedule.batch_size, gen):
                if (step // every) % 2 == 0:           # gate phase, on the policy split
                    pidx = next(policy_batches)
                    with torch.no_grad():
                        z = im_outputs(ims, policy, pidx)
                        ce = exit_ce(z, policy, pidx)
                    targets = torch.stack([gate_targets(ce[m if ce.shape[0] > 1 else 0], costs, lam)
                                           for m, lam in enumerate(lams)])                   # [M, B, K−1]
                    loss = F.binary_cross_entropy_with_logits(gates(z), targets, pos_weight=pos_weight,
                                                              reduction="none").mean((1, 2)).sum()
                    opt, sched = opt_gate, sched_gate
                else:                                  # IM phase, on train
                    z = im_outputs(ims, train, idx)
                    ce = exit_ce(z, train, idx)[..., :-1]                                     # [M or 1, B, K−1]
                    if params["im_loss"] == "weighted":
                        with torch.no_grad():
                            P = exit_distribution(torch.sigmoid(gates(z)))[..., :-1]
                        loss = (P * ce).sum(-1).mean(-1).sum()
                    else:
                        loss = ce.mean()
                    opt, sched = opt_im, sched_im
                check_finite(loss, f"jei (lambdas={lams}), epoch {epoch + 1}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
            bar.update(1)
