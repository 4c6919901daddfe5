"""EENet: a learned early-exit scheduler for a budget of mean cost (``methods.md`` §4).

Ilhan et al., "EENet: Learning to Early Exit for Adaptive Inference", arXiv 2301.07099 (WACV 2024
as "Adaptive Deep Neural Network Inference Optimization with EENet"); equations as on the slides in
``../shared/papers/003_581877c910efdcfa.txt``.

A post-hoc scheduler on a trained multi-exit model. The IMs are trained first as in §1 (Σ_k ℓ_k).
Then, for every budget B (a target mean ``cost``) of ``budgets``:

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
- thresholds on ``val``: n_k = ⌊mean_n r̂_{n,k}·N⌋; in exit order, T_k is the n_k-th highest q̂_k
  among samples not yet exited, and those exit (:func:`eebench.exit_policy.thresholds_from_counts`).
  Test rule: exit at the first k with q̂_k ≥ T_k; a sample that passes no threshold exits at K.
  Thresholds are taken on the logit g_k of q̂_k, which orders samples identically, so that a
  sigmoid saturated at 1.0 in float32 cannot create ties.

The scorers train on ``train``. α_ce and α_cost are chosen on ``val`` per budget among the
candidates ``alpha_ce`` × ``alpha_cost``: the most accurate on val among those whose val cost is
within ``budget_tolerance`` of B, else the one whose val cost is closest to B; the chosen pair is
part of the operating point's setting. One operating point per budget. Only g_k runs at test time
(h_k shapes the exit shares during training), so the gate Mul-Adds of exit k < K are those of g_k.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from eebench.costs import module_muladds
from eebench.errors import ConfigError
from eebench.exit_policy import apply_thresholds, thresholds_from_counts
from eebench.features import SplitFeatures
from eebench.method import ExitMethod, ExitTask, FittedMethod, OperatingPoint, register_method
from eebench.training import SGD_DEFAULTS, SGDSchedule, check_finite, exit_probs, minibatches, train_ims
from methods.threshold import im_loss_weights

BUDGETS = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
ALPHA_CE = [0.1, 1.0]
ALPHA_COST = [1.0, 10.0]

log = logging.getLogger(__name__)


def feasible_budgets(budgets: list[float], exit_costs: torch.Tensor, explicit: bool = True) -> list[float]:
    """The budgets B EENet can meet: c_1 < B ≤ c_K (``methods.md`` §4; a mean cost below the first
    exit's is unreachable, one above the last exit's is the full network).

    Args:
        budgets: target mean costs B (normalised Mul-Adds).
        exit_costs: ``[K]`` cost of exiting at each exit, increasing.
        explicit: whether the user chose ``budgets``. The default grid (:data:`BUDGETS`) is the
            same for every backbone, so its infeasible levels are dropped with a log line (on
            T2T-ViT-7 at 28 px the first exit alone costs 0.31); a budget the user asked for that
            cannot be met is an error.

    Returns:
        the feasible budgets, in the given order.

    Raises:
        ConfigError: an explicit budget is infeasible, or none is feasible.
    """
    lo, hi = float(exit_costs[0]), float(exit_costs[-1])
    budgets = [float(b) for b in budgets]
    keep = [b for b in budgets if lo < b <= hi]
    dropped = [b for b in budgets if b not in keep]
    where = f"each budget must lie in ({lo:.3f}, {hi:.3f}], the costs of the first and last exits"
    if not keep or (dropped and explicit):
        raise ConfigError(f"method.budgets={budgets}: {where}")
    if dropped:
        log.info("eenet: default budget(s) %s skipped on this backbone: %s", dropped, where)
    return keep


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
                 exit_costs: torch.Tensor, budget: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EENet's three losses on a batch (Ilhan et al., §3.3, eqs. for L_g, L_CE and L_budget).

    Args:
        g_logits: ``[N, K]`` logits of the scores, q̂ = sigmoid(g_logits).
        h: ``[N, K]`` raw assignment scores, r̂ = softmax over k of h.
        q, r: ``[N, K]`` targets of :func:`eenet_targets`.
        exit_costs: ``[K]`` normalised costs c_k.
        budget: B, the target mean cost.

    Returns:
        ``(L_g, L_CE, L_budget)``, scalars: L_g = (1/K) Σ_n Σ_k w_{n,k} BCE(q̂_{n,k}, q_{n,k}) with
        w_{n,k} = s_{n,k} / Σ_{n'} s_{n',k}, s_{n,k} = 1 − Σ_{k'<k} r̂_{n,k'} (w without gradient);
        L_CE = −(1/NK) Σ r log r̂; L_budget = |B − mean_n Σ_k r̂_{n,k} c_k| / B.
    """
    N, K = h.shape
    log_r_hat = h.log_softmax(1)
    r_hat = log_r_hat.exp()
    l_ce = -(r * log_r_hat).sum() / (N * K)
    l_budget = (budget - (r_hat * exit_costs).sum(1).mean()).abs() / budget
    with torch.no_grad():
        survive = (1.0 - (r_hat.cumsum(1) - r_hat)).clamp_min(0.0)
        w = survive / survive.sum(0, keepdim=True).clamp_min(1e-12)
    l_g = (w * F.binary_cross_entropy_with_logits(g_logits, q, reduction="none")).sum() / K
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
    """The scoring functions g_k and assignment functions h_k of exits 1..K, stacked.

    Exit k's input is u_k = (a_k, q̂_1..q̂_{k−1}), ``2 + k`` numbers, with the earlier scores
    detached. g_k is row k of ``g_weight`` restricted to its first 2 + k entries (an
    ``nn.Linear(2 + k, 1)``); h_k is ``Linear(2 + k, hidden) → ReLU → Linear(hidden, 1)`` likewise.
    All exits are evaluated in one batched pass over u padded with zeros to 2 + K entries (the
    padding meets masked-out weights, so each exit sees exactly its own inputs); only the detached
    scores q̂_{<k} are computed exit by exit.
    """

    def __init__(self, num_exits: int, hidden: int = 16):
        super().__init__()
        K, d = num_exits, 2 + num_exits
        fan_in = torch.arange(3, K + 3, dtype=torch.float32)                       # 2 + k, k = 1..K
        self.register_buffer("mask", (torch.arange(d)[None, :] < fan_in[:, None]).float())   # [K, d]
        bound = fan_in.rsqrt()
        self.g_weight = nn.Parameter((torch.rand(K, d) * 2 - 1) * bound[:, None] * self.mask)
        self.g_bias = nn.Parameter((torch.rand(K) * 2 - 1) * bound)
        self.h_weight1 = nn.Parameter((torch.rand(K, d, hidden) * 2 - 1) * bound[:, None, None] * self.mask[..., None])
        self.h_bias1 = nn.Parameter((torch.rand(K, hidden) * 2 - 1) * bound[:, None])
        self.h_weight2 = nn.Parameter((torch.rand(K, hidden) * 2 - 1) / hidden ** 0.5)
        self.h_bias2 = nn.Parameter((torch.rand(K) * 2 - 1) / hidden ** 0.5)

    @property
    def num_exits(self) -> int:
        return self.mask.shape[0]

    def inputs(self, features: torch.Tensor) -> torch.Tensor:
        """``[N, K, 3]`` confidence features → ``[N, K, 2 + K]`` inputs u_k (zero-padded), the
        earlier scores q̂_{<k} computed exit by exit without gradient."""
        N, K, _ = features.shape
        w = (self.g_weight * self.mask).detach()
        scores = features.new_zeros(N, K - 1)
        with torch.no_grad():
            for k in range(K - 1):
                logit = features[:, k] @ w[k, :3] + scores[:, :k] @ w[k, 3:3 + k] + self.g_bias[k]
                scores[:, k] = torch.sigmoid(logit)
        earlier = torch.ones(K, K - 1).tril(-1)                                     # [k, j]: j < k
        return torch.cat([features, scores[:, None, :] * earlier], dim=-1)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[N, K, 3]`` confidence features → ``(g_logits, h)``, each ``[N, K]`` (q̂ = sigmoid(g_logits))."""
        u = self.inputs(features)
        g_logits = (u * (self.g_weight * self.mask)).sum(-1) + self.g_bias
        hidden = torch.relu(torch.einsum("nkd,kdh->nkh", u, self.h_weight1 * self.mask[..., None]) + self.h_bias1)
        h = (hidden * self.h_weight2).sum(-1) + self.h_bias2
        return g_logits, h

    def gate_muladds(self) -> list[int]:
        """Mul-Adds of g_k, an ``nn.Linear(2 + k, 1)``, for the exits k < K (h_k does not run at test time)."""
        return [module_muladds(nn.Linear(2 + k, 1), torch.zeros(1, 2 + k)) for k in range(1, self.num_exits)]


class EENetFitted(FittedMethod):
    """IMs shared by every budget; one scheduler and threshold vector per budget."""

    def __init__(self, ims: nn.ModuleList, schedulers: list[tuple[dict[str, Any], EENetScheduler, np.ndarray]],
                 gate_muladds: list[int]):
        self.ims, self.schedulers, self.gate_muladds = ims, schedulers, gate_muladds

    @torch.no_grad()
    def predict(self, split: SplitFeatures) -> list[OperatingPoint]:
        probs = exit_probs(self.ims, split)
        feats = confidence_features(probs)
        points = []
        for setting, scheduler, T in self.schedulers:
            g_logits, _ = scheduler(feats)
            exits = apply_thresholds(g_logits.double().numpy(), T)
            points.append(OperatingPoint(dict(setting), exits, probs, self.gate_muladds))
        return points


@register_method
class EENet(ExitMethod):
    name = "eenet"
    aliases = ("ee-net",)
    paper = "Ilhan et al., arXiv 2301.07099 / WACV 2024 (EENet)"
    parameters: dict[str, Any] = {
        **SGD_DEFAULTS,              # IM training (methods.md §1)
        "loss_weights": "uniform",
        "budgets": BUDGETS,          # one operating point per target mean cost B
        "alpha_ce": ALPHA_CE,        # candidates, chosen on val per budget
        "alpha_cost": ALPHA_COST,
        "budget_tolerance": 0.02,    # val cost within B ± this counts as meeting the budget
        "scorer_hidden": 16,
        "scorer_steps": 1000,        # Adam steps per scheduler
        "scorer_lr": 1e-3,
        "scorer_weight_decay": 1e-4,
        "scorer_batch_size": 512,
    }
    grid = {"budgets": [[b] for b in BUDGETS], "alpha_ce": [[a] for a in ALPHA_CE],
            "alpha_cost": [[a] for a in ALPHA_COST]}
    test_parameters = {"epochs": 4, "budgets": [0.4, 0.7], "alpha_ce": [1.0], "alpha_cost": [10.0],
                       "scorer_steps": 300}

    def fit(self, task: ExitTask, params: dict[str, Any], seed: int) -> EENetFitted:
        K = task.num_exits
        gate_muladds = EENetScheduler(K, int(params["scorer_hidden"])).gate_muladds()
        costs = task.costs.exit_costs(gate_muladds)
        budgets = feasible_budgets(params["budgets"], costs, explicit=list(params["budgets"]) != BUDGETS)
        alphas = [(float(a), float(b)) for a in params["alpha_ce"] for b in params["alpha_cost"]]
        if not alphas:
            raise ConfigError("method.alpha_ce and method.alpha_cost need at least one value each")
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        ims = task.make_ims()
        schedule = SGDSchedule.from_params(params)
        with tqdm(total=schedule.epochs + len(budgets) * len(alphas), desc="eenet", leave=False) as bar:
            train_ims(ims, task.train, im_loss_weights(params["loss_weights"], K), schedule, gen,
                      where="eenet: IM training", progress=bar)
            train_p, val_p = exit_probs(ims, task.train), exit_probs(ims, task.val)
            train_f, val_f = confidence_features(train_p), confidence_features(val_p)
            q, r = eenet_targets(train_p, task.train.labels)
            val_correct = (val_p.argmax(-1) == task.val.labels[:, None]).numpy()
            c = torch.as_tensor(costs, dtype=torch.float32)
            schedulers = []
            for B in budgets:
                best = None
                for a_ce, a_cost in alphas:
                    torch.manual_seed(seed)
                    scheduler = self._fit_scheduler(train_f, q, r, c, B, a_ce, a_cost, params, gen)
                    with torch.no_grad():
                        g_val, h_val = scheduler(val_f)
                    T = eenet_thresholds(g_val.double().numpy(), h_val.softmax(1).numpy())
                    exits = apply_thresholds(g_val.double().numpy(), T)
                    val_cost = float(costs[exits].mean())
                    val_acc = float(val_correct[np.arange(len(exits)), exits].mean())
                    meets = abs(val_cost - B) <= params["budget_tolerance"]
                    key = (meets, val_acc if meets else -abs(val_cost - B))
                    if best is None or key > best[0]:
                        best = (key, {"budget": B, "alpha_ce": a_ce, "alpha_cost": a_cost}, scheduler, T)
                    bar.update(1)
                schedulers.append(best[1:])
        return EENetFitted(ims, schedulers, gate_muladds)

    @staticmethod
    def _fit_scheduler(features: torch.Tensor, q: torch.Tensor, r: torch.Tensor, costs: torch.Tensor, budget: float,
                       alpha_ce: float, alpha_cost: float, params: dict[str, Any], gen: torch.Generator
                       ) -> EENetScheduler:
        """Train g_k and h_k on ``train`` with L_g + α_ce·L_CE + α_cost·L_budget (Adam)."""
        scheduler = EENetScheduler(features.shape[1], int(params["scorer_hidden"]))
        opt = torch.optim.Adam(scheduler.parameters(), lr=params["scorer_lr"], weight_decay=params["scorer_weight_decay"])
        steps, total = 0, int(params["scorer_steps"])
        while steps < total:
            for idx in minibatches(features.shape[0], int(params["scorer_batch_size"]), gen):
                g_logits, h = scheduler(features[idx])
                l_g, l_ce, l_budget = eenet_losses(g_logits, h, q[idx], r[idx], costs, budget)
                loss = l_g + alpha_ce * l_ce + alpha_cost * l_budget
                check_finite(loss, f"eenet (budget={budget}), scheduler step {steps + 1}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
                if steps == total:
                    break
        scheduler.eval()
        return scheduler
