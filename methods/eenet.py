"""EENet: a learned early-exit scheduler for a budget of mean cost (``methods.md`` §4).

Ilhan et al., "EENet: Learning to Early Exit for Adaptive Inference", arXiv 2301.07099 (WACV 2024
as "Adaptive Deep Neural Network Inference Optimization with EENet"); equations as on the slides in
``../shared/papers/003_581877c910efdcfa.txt``.

A post-hoc scheduler on a trained multi-exit model: the IMs are the shared IM stage's (Σ_k ℓ_k,
:mod:`eebench.harness.im_stage`). Then, for every budget B (a target mean ``cost``) of ``budgets`` (by
default ``num_budgets`` evenly spaced from the first exit's cost to 1):

- confidence features of exit k, from p_k = softmax(z_k): a_k = (max_c p_{k,c},
  1 + Σ_c p_{k,c} log p_{k,c} / log C, (1/k)·max_c Σ_{k'≤k} 1[argmax p_{k'} = c]);
- exit k's input u_k = (a_k, q̂_1..q̂_{k−1}) (the scores of earlier exits, detached);
  scoring function g_k: ``nn.Linear(2 + k, 1)``, q̂_k = sigmoid(g_k(u_k)) (exit utility score);
  assignment function h_k: ``Linear(2 + k, hidden) → ReLU → Linear(hidden, 1)``, and
  r̂_{n,·} = softmax_k(h_k(u_k)) over the raw h_k (the released code's softmax of sigmoid outputs,
  which bounds every exit's share near 1/K, is not repeated);
- targets q_k = 1[argmax p_k = y]; r_k = q_k / Σ_k' q_k' (1/K for every k if no exit is correct);
- losses, per mini-batch of N samples: L_CE = −(1/NK) Σ_n Σ_k r_{n,k} log r̂_{n,k};
  L_budget = |B − (1/N) Σ_n Σ_k r̂_{n,k} c_k| / B;
  L_g = (1/K) Σ_n Σ_k w_{n,k} BCE(q̂_{n,k}, q_{n,k}) with
  w_{n,k} = (1 − Σ_{k'<k} r̂_{n,k'}) / Σ_{n'} (1 − Σ_{k'<k} r̂_{n',k'}) taken without gradient
  (as the released code detaches its weights); total L_g + α_ce·L_CE + α_cost·L_budget (Adam);
- thresholds on the policy split: n_k = ⌊mean_n r̂_{n,k}·N⌋; in exit order, T_k is the n_k-th highest q̂_k
  among samples not yet exited, and those exit (:func:`eebench.harness.exit_policy.thresholds_from_counts`).
  Test rule: exit at the first k with q̂_k ≥ T_k; a sample that passes no threshold exits at K.
  Thresholds are taken on the logit g_k of q̂_k, which orders samples identically, so that a
  sigmoid saturated at 1.0 in float32 cannot create ties.

The scorers train on the policy split (the official code trains them on validation predictions),
all (budget, α_ce, α_cost) schedulers side by side as one stacked model (Adam is elementwise, so
this is the same as training them one by one on the same mini-batches). α_ce and α_cost are
chosen on ``val`` per budget among the candidates ``alpha_ce`` × ``alpha_cost``: the most accurate on val among those whose val cost is
within ``budget_tolerance`` of B, else the one whose val cost is closest to B; the chosen pair is
part of the operating point's setting. One operating point per budget. Only g_k runs at test time
(h_k shapes the exit shares during training), so the gate Mul-Adds of exit k < K are those of g_k.

``scorer: official`` swaps the scheduler above for the one the released code builds (git-disl/EENet:
g_k a bias-free linear map of the whole softmax vector, max and entropy; h_k sigmoid outputs under
a softmax; BCE and KL + cost terms trained in alternating phases of 10 epochs; thresholds on the
raw scores) with its crashes and accumulating gradients fixed and every sample answered, under
the same protocol (policy split, ``scorer_steps``, α and points chosen on val):
:mod:`methods.eenet_official`, with the official file:line of each element.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from eebench.method import (AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, ConfigError, Each, ExitMethod, ExitRule, ExitTask,
                            FittedMethod, OneOf, OperatingPoint, SplitFeatures, apply_thresholds, check_finite,
                            exit_probs, minibatches, module_muladds, pack, register_method, thresholds_from_counts,
                            unpack)
from methods.eenet_official import (EENetOfficialFitted, OfficialScheduler, official_exits, official_features,
                                    official_thresholds, train_official)

ALPHA_CE = [0.1, 1.0]
ALPHA_COST = [1.0, 10.0]


def feasible_budgets(budgets: list[float], exit_costs: torch.Tensor) -> list[float]:
    """Check that EENet can meet every budget B: c_1 < B ≤ c_K (``methods.md`` §4; a mean cost below
    the first exit's is unreachable, one above the last exit's is the full network).

    Args:
        budgets: target mean costs B (normalised Mul-Adds).
        exit_costs: ``[K]`` cost of exiting at each exit, increasing.

    Returns:
        the budgets as floats, in the given order.

    Raises:
        ConfigError: a budget is infeasible, or none is given.
    """
    lo, hi = float(exit_costs[0]), float(exit_costs[-1])
    budgets = [float(b) for b in budgets]
    if not budgets or any(not lo < b <= hi for b in budgets):
        raise ConfigError(f"method.budgets={budgets}: each budget must lie in ({lo:.3f}, {hi:.3f}], the costs of "
                          f"the first and last exits")
    return budgets


def confidence_features(probs: torch.Tensor) -> torch.Tensor:
    """EENet's three confidence scores of every exit (Ilhan et al., §3.2).

    Args:
        probs: ``[N, K, C]`` softmax outputs p_k of every exit.

    Returns:
        ``[N, K, 3]``: max_c p_{k,c}; 1 + Σ_c p_{k,c} log p_{k,c} / log C (1 for a one-hot p,
        0 for the uniform one); and the vote (1/k)·max_c Σ_{k'≤k} 1[argmax p_{k'} = c].
    """
    N, K, C = probs.shape
    top = probs.amax(-1)
    entropy_score = 1.0 + torch.xlogy(probs, probs).sum(-1) / math.log(C)
    votes = F.one_hot(probs.argmax(-1), C).cumsum(1).amax(-1).float()             # [N, K]
    vote = votes / torch.arange(1, K + 1, dtype=probs.dtype)
    return torch.stack([top, entropy_score, vote], dim=-1)


def eenet_targets(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets q (exit k is correct) and r (the exit assignment to learn) (Ilhan et al., §3.3).

    Args:
        probs: ``[N, K, C]``; labels: ``[N]``.

    Returns:
        ``(q, r)``, both ``[N, K]`` float: q_k = 1[argmax p_k = y]; r_k = q_k / Σ_k' q_k' when
        some exit is correct, else 1/K for every k.
    """
    q = (probs.argmax(-1) == labels[:, None]).float()
    total = q.sum(1, keepdim=True)
    r = torch.where(total > 0, q / total.clamp_min(1.0), torch.full_like(q, 1.0 / q.shape[1]))
    return q, r


def eenet_losses(g_logits: torch.Tensor, h: torch.Tensor, q: torch.Tensor, r: torch.Tensor,
                 exit_costs: torch.Tensor, budget: float | torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EENet's three losses on a batch (Ilhan et al., §3.3, eqs. for L_g, L_CE and L_budget).

    Args:
        g_logits: ``[..., N, K]`` logits of the scores, q̂ = sigmoid(g_logits) (leading dims:
            schedulers trained side by side).
        h: ``[..., N, K]`` raw assignment scores, r̂ = softmax over k of h.
        q, r: ``[N, K]`` targets of :func:`eenet_targets`.
        exit_costs: ``[K]`` normalised costs c_k.
        budget: B, the target mean cost (a float, or ``[...]`` one per scheduler).

    Returns:
        ``(L_g, L_CE, L_budget)``, each ``[...]`` (scalars for 2-D inputs): L_g = (1/K) Σ_n Σ_k
        w_{n,k} BCE(q̂_{n,k}, q_{n,k}) with w_{n,k} = s_{n,k} / Σ_{n'} s_{n',k},
        s_{n,k} = 1 − Σ_{k'<k} r̂_{n,k'} (w without gradient); L_CE = −(1/NK) Σ r log r̂;
        L_budget = |B − mean_n Σ_k r̂_{n,k} c_k| / B.
    """
    N, K = h.shape[-2:]
    budget = torch.as_tensor(budget, dtype=h.dtype)
    log_r_hat = h.log_softmax(-1)
    r_hat = log_r_hat.exp()
    l_ce = -(r * log_r_hat).sum((-2, -1)) / (N * K)
    l_budget = (budget - (r_hat * exit_costs).sum(-1).mean(-1)).abs() / budget
    with torch.no_grad():
        survive = (1.0 - (r_hat.cumsum(-1) - r_hat)).clamp_min(0.0)
        w = survive / survive.sum(-2, keepdim=True).clamp_min(1e-12)
    bce = F.binary_cross_entropy_with_logits(g_logits, q.expand_as(g_logits), reduction="none")
    l_g = (w * bce).sum((-2, -1)) / K
    return l_g, l_ce, l_budget


def eenet_thresholds(scores: np.ndarray, r_hat: np.ndarray) -> np.ndarray:
    """EENet's thresholds on val: counts n_k = ⌊mean_n r̂_{n,k}·N⌋, then the MSDNet search
    (:func:`thresholds_from_counts`) on the scores. ``[N, K]`` each → ``[K]`` (T_K = −∞).

    (A 1e-9 guard keeps ⌊·⌋ from dropping a sample when N·mean r̂ is an integer up to rounding.)
    """
    n = scores.shape[0]
    counts = np.floor(np.asarray(r_hat, dtype=np.float64).mean(0) * n + 1e-9).astype(int)
    return thresholds_from_counts(np.asarray(scores, dtype=np.float64), counts)


class EENetScheduler(nn.Module):
    """The scoring functions g_k and assignment functions h_k of exits 1..K, stacked; optionally M
    schedulers side by side (``models``), each with its own parameters, all initialised alike.

    Exit k's input is u_k = (a_k, q̂_1..q̂_{k−1}), ``2 + k`` numbers, with the earlier scores
    detached. g_k is row k of ``g_weight`` restricted to its first 2 + k entries (an
    ``nn.Linear(2 + k, 1)``); h_k is ``Linear(2 + k, hidden) → ReLU → Linear(hidden, 1)`` likewise.
    All exits are evaluated in one batched pass over u padded with zeros to 2 + K entries (the
    padding meets masked-out weights, so each exit sees exactly its own inputs); only the detached
    scores q̂_{<k} are computed exit by exit.

    Args:
        num_exits: K.
        hidden: width of h_k's hidden layer.
        models: M schedulers side by side (outputs gain a leading ``[M]``), or None for one.
    """

    def __init__(self, num_exits: int, hidden: int = 16, models: int | None = None):
        super().__init__()
        K, d, M = num_exits, 2 + num_exits, models or 1
        self.single = models is None
        fan_in = torch.arange(3, K + 3, dtype=torch.float32)                       # 2 + k, k = 1..K
        self.register_buffer("mask", (torch.arange(d)[None, :] < fan_in[:, None]).float())   # [K, d]
        bound = fan_in.rsqrt()

        def stacked(t: torch.Tensor) -> nn.Parameter:
            return nn.Parameter(t.expand(M, *t.shape).clone())

        self.g_weight = stacked((torch.rand(K, d) * 2 - 1) * bound[:, None] * self.mask)
        self.g_bias = stacked((torch.rand(K) * 2 - 1) * bound)
        self.h_weight1 = stacked((torch.rand(K, d, hidden) * 2 - 1) * bound[:, None, None] * self.mask[..., None])
        self.h_bias1 = stacked((torch.rand(K, hidden) * 2 - 1) * bound[:, None])
        self.h_weight2 = stacked((torch.rand(K, hidden) * 2 - 1) / hidden ** 0.5)
        self.h_bias2 = stacked((torch.rand(K) * 2 - 1) / hidden ** 0.5)

    @property
    def num_exits(self) -> int:
        return self.mask.shape[0]

    def _out(self, t: torch.Tensor) -> torch.Tensor:
        return t[0] if self.single else t

    def _inputs(self, features: torch.Tensor) -> torch.Tensor:
        N, K, _ = features.shape
        M = self.g_weight.shape[0]
        w = (self.g_weight * self.mask).detach()                                    # [M, K, d]
        b = self.g_bias.detach()
        scores = features.new_zeros(M, N, K - 1)
        with torch.no_grad():
            for k in range(K - 1):
                logit = (features[:, k] @ w[:, k, :3].T).T + torch.einsum("mnj,mj->mn", scores[:, :, :k],
                                                                           w[:, k, 3:3 + k]) + b[:, k, None]
                scores[:, :, k] = torch.sigmoid(logit)
        earlier = torch.ones(K, K - 1).tril(-1)                                     # [k, j]: j < k
        return torch.cat([features.expand(M, N, K, 3), scores[:, :, None, :] * earlier], dim=-1)

    def inputs(self, features: torch.Tensor) -> torch.Tensor:
        """``[N, K, 3]`` confidence features → ``[(M,) N, K, 2 + K]`` inputs u_k (zero-padded), the
        earlier scores q̂_{<k} computed exit by exit without gradient."""
        return self._out(self._inputs(features))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[N, K, 3]`` confidence features → ``(g_logits, h)``, each ``[(M,) N, K]`` (q̂ = sigmoid(g_logits))."""
        u = self._inputs(features)
        g_logits = (u * (self.g_weight * self.mask)[:, None]).sum(-1) + self.g_bias[:, None]
        hidden = torch.relu(torch.einsum("mnkd,mkdh->mnkh", u, self.h_weight1 * self.mask[..., None])
                            + self.h_bias1[:, None])
        h = (hidden * self.h_weight2[:, None]).sum(-1) + self.h_bias2[:, None]
        return self._out(g_logits), self._out(h)

    def gate_muladds(self) -> list[int]:
        """Mul-Adds of g_k, an ``nn.Linear(2 + k, 1)``, for the exits k < K (h_k does not run at test time)."""
        return [module_muladds(nn.Linear(2 + k, 1), torch.zeros(1, 2 + k)) for k in range(1, self.num_exits)]

    @torch.no_grad()
    def scores(self, features: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` over a whole split in chunks of samples: ``(g_logits, h)``, ``[(M,) N, K]``."""
        parts = [self(features[i:i + chunk]) for i in range(0, features.shape[0], chunk)]
        dim = 0 if self.single else 1
        return torch.cat([g for g, _ in parts], dim), torch.cat([h for _, h in parts], dim)


def choose_per_budget(settings: list[tuple[float, float, float]], budgets: list[float],
                      val_exits: Callable[[int], tuple[np.ndarray, np.ndarray]], exit_costs: np.ndarray,
                      val_correct: np.ndarray, tolerance: float) -> list[tuple[dict[str, Any], int, np.ndarray]]:
    """The scheduler of each budget B, chosen on val among the settings (B, α_ce, α_cost): the most
    accurate among those whose val cost is within ``tolerance`` of B, else the one whose val cost is
    closest to B (earlier settings win ties).

    Args:
        val_exits: scheduler index m → (``[N]`` exits on val, ``[K]`` its thresholds).
        exit_costs: ``[K]`` c_k; val_correct: ``[N, K]`` bool, exit k is right on val sample n.

    Returns:
        per budget, in order: (setting, m, thresholds).
    """
    best: dict[float, tuple] = {}
    for m, (B, a_ce, a_cost) in enumerate(settings):
        exits, T = val_exits(m)
        val_cost = float(exit_costs[exits].mean())
        val_acc = float(val_correct[np.arange(len(exits)), exits].mean())
        meets = abs(val_cost - B) <= tolerance
        key = (meets, val_acc if meets else -abs(val_cost - B))
        if B not in best or key > best[B][0]:
            best[B] = (key, {"budget": B, "alpha_ce": a_ce, "alpha_cost": a_cost}, m, T)
    return [best[B][1:] for B in budgets]


def auto_budgets(first_exit_cost: float, count: int) -> list[float]:
    """The default budgets: ``count`` target mean costs evenly spaced from the first exit's cost c_1
    (excluded: a mean cost of c_1 is everyone at exit 1) to 1, the plain backbone's cost:
    B_j = c_1 + (1 − c_1)·j / count, j = 1..count, rounded to 4 decimals."""
    return [round(first_exit_cost + (1.0 - first_exit_cost) * j / count, 4) for j in range(1, count + 1)]


class EENetRule(ExitRule):
    """EENet's test rule for one budget, exit by exit (Ilhan et al., §3.3): exit k's three confidence
    scores (:func:`confidence_features`, the vote counted over exits 1..k), the score g_k of scheduler
    ``m`` on them and q̂_{<k}, exit where g_k ≥ T_k. The state is ``(votes [B, C], q̂ [B, M, K−1])``:
    the class votes so far and every scheduler's q̂ of the exits passed (as
    :meth:`EENetScheduler.inputs` computes them)."""

    def __init__(self, ims: nn.ModuleList, scheduler: EENetScheduler, m: int, thresholds: np.ndarray):
        self.ims, self.scheduler, self.m = ims, scheduler, m
        self.thresholds, self.modules = [float(t) for t in thresholds], [ims, scheduler]

    def at_exit(self, k: int, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, torch.Tensor, Any]:
        probs = self.ims[k - 1](x).softmax(-1)                                         # [B, C]
        B, C = probs.shape
        sched, i = self.scheduler, k - 1
        K = sched.num_exits
        votes = F.one_hot(probs.argmax(-1), C) + (0 if state is None else state[0])
        scores = probs.new_zeros(B, sched.g_weight.shape[0], K - 1) if state is None else state[1]
        feats = torch.stack([probs.amax(-1), 1.0 + torch.xlogy(probs, probs).sum(-1) / math.log(C),
                             votes.amax(-1).float() / torch.tensor(float(k), dtype=probs.dtype)], -1)   # [B, 3]
        w, b = (sched.g_weight * sched.mask).detach(), sched.g_bias.detach()          # [M, K, d], [M, K]
        earlier = (torch.arange(K - 1, device=x.device) < i).to(probs.dtype)
        u = torch.cat([feats, scores[:, self.m] * earlier], -1)                        # [B, d]
        g = (u * w[self.m, i]).sum(-1) + b[self.m, i]
        with torch.no_grad():
            logit = (feats @ w[:, i, :3].T).T + torch.einsum("mnj,mj->mn", scores.permute(1, 0, 2)[:, :, :i],
                                                              w[:, i, 3:3 + i]) + b[:, i, None]      # [M, B]
            scores = scores.clone()
            scores[:, :, i] = torch.sigmoid(logit).T
        return g.double() >= self.thresholds[i], probs, (votes, scores)


class EENetFitted(FittedMethod):
    """IMs shared by every budget; the chosen schedulers (stacked) and one threshold vector per budget."""

    def __init__(self, ims: nn.ModuleList, scheduler: EENetScheduler,
                 chosen: list[tuple[dict[str, Any], int, np.ndarray]], gate_muladds: list[int]):
        self.ims, self.scheduler, self.chosen, self.gate_muladds = ims, scheduler, chosen, gate_muladds

    @torch.no_grad()
    def predict(self, split: SplitFeatures) -> list[OperatingPoint]:
        probs = exit_probs(self.ims, split)
        g_logits, _ = self.scheduler.scores(confidence_features(probs))
        return [OperatingPoint(dict(setting), apply_thresholds(g_logits[m].double().numpy(), T), probs,
                               self.gate_muladds) for setting, m, T in self.chosen]

    def exit_rules(self) -> list[ExitRule]:
        """One :class:`EENetRule` per budget."""
        return [EENetRule(self.ims, self.scheduler, m, T) for _, m, T in self.chosen]

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """IMs, the M stacked schedulers and the ``[budgets, K]`` float64 thresholds; settings: each
        budget's setting and scheduler index, the schedulers' shape."""
        T = torch.as_tensor(np.stack([t for _, _, t in self.chosen]), dtype=torch.float64)
        return pack(ims=self.ims, scheduler=self.scheduler, thresholds=T), {
            "chosen": [[setting, m] for setting, m, _ in self.chosen], "gate_muladds": self.gate_muladds,
            "models": int(self.scheduler.g_weight.shape[0]), "hidden": int(self.scheduler.h_weight1.shape[-1])}


@register_method
class EENet(ExitMethod):
    name = "eenet"
    aliases = ("ee-net",)
    paper = "Ilhan et al., arXiv 2301.07099 / WACV 2024 (EENet)"
    parameters: dict[str, Any] = {
        "budgets": [],               # target mean costs B; empty: num_budgets from the first exit's cost to 1
        "num_budgets": 10,
        "alpha_ce": ALPHA_CE,        # candidates, chosen on val per budget
        "alpha_cost": ALPHA_COST,
        "budget_tolerance": 0.02,    # val cost within B ± this counts as meeting the budget
        "scorer_hidden": 16,
        "scorer_steps": 1000,        # Adam steps of the schedulers
        "scorer_lr": 1e-3,
        "scorer_weight_decay": 1e-4,
        "scorer_batch_size": 512,
        "scorer": "paper",           # paper | official (the released code's scheduler, methods/eenet_official.py)
    }
    constraints = {"budgets": Each(POSITIVE, min_len=0), "num_budgets": AT_LEAST_ONE,
                   "alpha_ce": Each(NON_NEGATIVE), "alpha_cost": Each(NON_NEGATIVE), "budget_tolerance": NON_NEGATIVE,
                   "scorer_hidden": AT_LEAST_ONE, "scorer_steps": AT_LEAST_ONE, "scorer_lr": POSITIVE,
                   "scorer_weight_decay": NON_NEGATIVE, "scorer_batch_size": AT_LEAST_ONE,
                   "scorer": OneOf(("paper", "official"))}
    grid = {"alpha_ce": [[a] for a in ALPHA_CE], "alpha_cost": [[a] for a in ALPHA_COST]}
    test_parameters = {"num_budgets": 3, "alpha_ce": [1.0], "alpha_cost": [10.0], "scorer_steps": 300}

    def fit(self, task: ExitTask, params: dict[str, Any], seed: int) -> EENetFitted | EENetOfficialFitted:
        if params["scorer"] == "official":
            return self._fit_official(task, params, seed)
        K = task.num_exits
        gate_muladds = EENetScheduler(K, int(params["scorer_hidden"])).gate_muladds()
        costs = task.costs.exit_costs(gate_muladds)
        budgets = feasible_budgets(params["budgets"] or auto_budgets(float(costs[0]), int(params["num_budgets"])),
                                   costs)
        alphas = [(float(a), float(b)) for a in params["alpha_ce"] for b in params["alpha_cost"]]
        settings = [(B, a_ce, a_cost) for B in budgets for a_ce, a_cost in alphas]
        ims = task.trained_ims()
        policy_p, val_p = exit_probs(ims, task.policy), exit_probs(ims, task.val)
        policy_f, val_f = confidence_features(policy_p), confidence_features(val_p)
        q, r = eenet_targets(policy_p, task.policy.labels)
        torch.manual_seed(seed)
        scheduler = self._fit_schedulers(policy_f, q, r, torch.as_tensor(costs, dtype=torch.float32), settings,
                                         params, torch.Generator().manual_seed(seed), task.progress)
        g_policy, h_policy = scheduler.scores(policy_f)
        g_val, _ = scheduler.scores(val_f)
        val_correct = (val_p.argmax(-1) == task.val.labels[:, None]).numpy()

        def val_exits(m: int) -> tuple[np.ndarray, np.ndarray]:
            T = eenet_thresholds(g_policy[m].double().numpy(), h_policy[m].softmax(-1).numpy())
            return apply_thresholds(g_val[m].double().numpy(), T), T

        chosen = choose_per_budget(settings, budgets, val_exits, costs, val_correct, params["budget_tolerance"])
        return EENetFitted(ims, scheduler, chosen, gate_muladds)

    def _fit_official(self, task: ExitTask, params: dict[str, Any], seed: int) -> EENetOfficialFitted:
        """``scorer: official``: the released code's scheduler (:mod:`methods.eenet_official`) under
        this method's protocol: budgets, α candidates, policy split, steps and choice on val as above."""
        K, C = task.num_exits, task.num_classes
        gate_muladds = OfficialScheduler(K, C).gate_muladds()
        costs = task.costs.exit_costs(gate_muladds)
        budgets = feasible_budgets(params["budgets"] or auto_budgets(float(costs[0]), int(params["num_budgets"])),
                                   costs)
        settings = [(B, float(a), float(b)) for B in budgets for a in params["alpha_ce"] for b in params["alpha_cost"]]
        ims = task.trained_ims()
        policy_p, val_p = exit_probs(ims, task.policy), exit_probs(ims, task.val)
        policy_f = official_features(policy_p)
        q = (policy_p.argmax(-1) == task.policy.labels[:, None]).float()
        torch.manual_seed(seed)
        scheduler = train_official(policy_f, q, torch.as_tensor(costs, dtype=torch.float32), settings, params,
                                   torch.Generator().manual_seed(seed), task.progress)
        with torch.no_grad():
            g_policy, h_policy = scheduler(policy_f)
        g_val = scheduler.test_scores(official_features(val_p))
        val_correct = (val_p.argmax(-1) == task.val.labels[:, None]).numpy()

        def val_exits(m: int) -> tuple[np.ndarray, np.ndarray]:
            T = official_thresholds(g_policy[m], h_policy[m].softmax(-1))
            return official_exits(g_val[m].double().numpy(), T), T

        chosen = choose_per_budget(settings, budgets, val_exits, costs, val_correct, params["budget_tolerance"])
        return EENetOfficialFitted(ims, scheduler, chosen, gate_muladds)

    def restore(self, tensors: dict[str, torch.Tensor], settings: dict[str, Any],
                make_ims: Callable[[], nn.ModuleList]) -> EENetFitted | EENetOfficialFitted:
        ims = unpack(tensors, "ims", make_ims())
        chosen = [(dict(setting), int(m), T.numpy()) for (setting, m), T in zip(settings["chosen"], tensors["thresholds"])]
        if settings.get("scorer") == "official":
            scheduler = OfficialScheduler(len(ims) + 1, settings["num_classes"], models=settings["models"])
            return EENetOfficialFitted(ims, unpack(tensors, "scheduler", scheduler), chosen,
                                       list(settings["gate_muladds"]))
        scheduler = EENetScheduler(len(ims) + 1, settings["hidden"], models=settings["models"])
        return EENetFitted(ims, unpack(tensors, "scheduler", scheduler), chosen, list(settings["gate_muladds"]))

    @staticmethod
    def _fit_schedulers(features: torch.Tensor, q: torch.Tensor, r: torch.Tensor, costs: torch.Tensor,
                        settings: list[tuple[float, float, float]], params: dict[str, Any], gen: torch.Generator,
                        progress: Any) -> EENetScheduler:
        """Train one scheduler per (B, α_ce, α_cost) of ``settings`` on the policy split, side by side,
        with L_g + α_ce·L_CE + α_cost·L_budget each (Adam)."""
        scheduler = EENetScheduler(features.shape[1], int(params["scorer_hidden"]), models=len(settings))
        B, a_ce, a_cost = (torch.tensor(col, dtype=torch.float32) for col in zip(*settings))
        opt = torch.optim.Adam(scheduler.parameters(), lr=params["scorer_lr"], weight_decay=params["scorer_weight_decay"])
        steps, total = 0, int(params["scorer_steps"])
        with progress("eenet schedulers", total) as bar:
            while steps < total:
                for idx in minibatches(features.shape[0], int(params["scorer_batch_size"]), gen):
                    g_logits, h = scheduler(features[idx])
                    l_g, l_ce, l_budget = eenet_losses(g_logits, h, q[idx], r[idx], costs, B)
                    loss = (l_g + a_ce * l_ce + a_cost * l_budget).sum()
                    check_finite(loss, f"eenet, scheduler step {steps + 1}")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    steps += 1
                    bar.update(1)
                    if steps == total:
                        break
        scheduler.eval()
        return scheduler
