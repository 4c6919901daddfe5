"""EENet's scheduler as the official code builds it (``--set method.scorer=official`` of ``methods/eenet.py``).

A helper module of :mod:`methods.eenet`: it registers no method and does nothing on import. It
reproduces the design of the scheduler of git-disl/EENet at commit
a5e80c8216bfa72c9a888193717c394bd6836638 (``utils/predict_helpers.py``, ``utils/predict_utils.py``;
"ph" and "pu" below), with its two crashes and its accumulating gradients fixed, and every sample
answered. Where the design differs from the paper scorer of :mod:`methods.eenet`:

- **inputs** (ph:241-262, ``prepare_input`` with its defaults ``max=1, entropy=True, vote=False``):
  exit k sees x_k = (p_k, max_c p_{k,c}, 1 + Σ_c p_{k,c} log p_{k,c} / log C), ``C + 2`` numbers
  (the whole softmax vector; no vote), then the scores of exits 1..k−1: ``C + 1 + k`` in all;
- **scoring function g_k** (ph:17-18, 23): bias-free, ``Linear(C, 1)`` on p_k plus ``Linear(1 + k, 1)``
  on the rest; in training the score is clamped to [0, 1] (ph:66) and the earlier scores it sees are
  the clamped ones, detached (ph:60-63); at test time nothing is clamped: the earlier scores are the
  raw g (pu:139-150). Fixed: ph:23 and ph:28 add ``.unsqueeze(-1)`` to the second term, which
  broadcasts ``[N, 1] + [N, 1, 1]`` to ``[N, N, 1]`` and crashes at exit 2 (ph:63); dropped here;
- **assignment function h_k** (ph:15, 20): ``Linear(C + 1 + k, ⌊0.5·(C + 1 + k)⌋) → Sigmoid →
  Linear(·, 1) → Sigmoid``, and r̂ = softmax over k of those sigmoid outputs (ph:72): each share
  lies in [1 / (1 + (K−1)e), e / (e + K − 1)] ([0.044, 0.254] for K = 9);
- **losses** (ph:76-99), on a mini-batch of N samples: L_BCE = (1/K) Σ_k Σ_n w_{n,k}·BCE(clamp(g), q)
  with w_{n,k} = r̂_{n,k} / Σ_{n'} r̂_{n',k} (detached; not the paper's survival weights), the log
  clamped at −100 as ``nn.BCELoss`` does; L_KL = mean_{n,k} t log(t / r̂) with the target
  t_{n,k} = clamp(g)_{n,k}^β / Σ_k' clamp(g)_{n,k'}^β, β = 1 (detached; the normalised scores, not
  the paper's r = q / Σ q); L_cost = |Σ_{n,k} r̂_{n,k} c_k / N − B| / B. Fixed: ph:128 returns the
  undefined name ``ce_loss`` (a NameError once the crash above is gone); the KL target of a sample
  whose clamped scores are all 0 is 0/0 in ph:79; it is 0 here (the sample adds nothing to L_KL);
- **alternating phases** (ph:187-199, ``period`` 10 in ``config.py:152-160``): epochs e with
  ⌊e / 10⌋ even minimise L_BCE alone, the others α_ce·L_KL + α_cost·L_cost alone; the loss is
  ``bce·q_flag + (α_ce·kl + α_cost·cost)·r_flag`` (ph:99), so one Adam (with its weight decay)
  steps every parameter on every step, and the loss gradient reaches only the phase's functions;
- **data order** (ph:182, 203-206): one permutation of the samples drawn once, walked in
  consecutive mini-batches every epoch. Fixed: ph:207-208 call ``loss.backward(); optimizer.step()``
  and never ``zero_grad``, so the gradients accumulate over the whole run; they are zeroed here
  before every backward pass;
- **thresholds** (ph:139-166 on the unclamped training-pass scores, ph:233-235): counts
  n_k = ⌊mean_n r̂_{n,k}·N⌋ for k < K; T_k = 1 where n_k = 0 (samples with a raw score ≥ 1 still
  exit there); else T_k = the n_k-th highest score among the samples left, and exactly those n_k
  leave. The official T_K = 0 on the raw score drops, in ``Tester.dynamic_eval_with_threshold``
  (pu:349-361), every sample whose last score is negative (counted wrong and free); here T_K = −∞:
  such a sample exits at K.

What the variant keeps of the harness's protocol (unlike the official code): the schedulers learn
on the policy split for ``scorer_steps`` Adam steps (the official: 1,000 epochs on validation
predictions, stopped after 100 epochs without a lower loss once L_cost < 0.1, ph:218-228); α_ce,
α_cost and the point of each budget are chosen on val as for the paper scorer (the official: the best
of 10 trials by accuracy on the data it trained on, pu:103-126); the optimiser settings are the
method's ``scorer_lr``, ``scorer_weight_decay`` and ``scorer_batch_size``. The measured effect:
``docs/fidelity.md``.
"""
from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from eebench.method import (ExitRule, FittedMethod, OperatingPoint, SplitFeatures, check_finite, exit_probs,
                            module_muladds, pack)

#: Epochs per phase (git-disl/EENet ``config.py:152-160``, ``period``).
PERIOD = 10
#: Width of h_k's hidden layer per input (``config.py``, ``hidden_dim_rate`` of the CIFAR settings).
HIDDEN_RATE = 0.5
#: Exponent of the KL target (``config.py``, ``beta_ce``).
BETA = 1.0
#: A sample whose raw score at exit k reaches this exits where the count n_k is 0 (ph:155-157).
EMPTY_THRESHOLD = 1.0


def official_features(probs: torch.Tensor) -> torch.Tensor:
    """The official scheduler's own inputs of every exit (``prepare_input``, ph:241-262).

    Args:
        probs: ``[N, K, C]`` softmax outputs p_k.

    Returns:
        ``[N, K, C + 2]``: p_k, max_c p_{k,c}, and 1 + Σ_c p_{k,c} log p_{k,c} / log C (0 log 0 = 0,
        where the official ``torch.log`` gives NaN for a probability that underflowed to 0).
    """
    C = probs.shape[-1]
    entropy_score = 1.0 + torch.xlogy(probs, probs).sum(-1, keepdim=True) / math.log(C)
    return torch.cat([probs, probs.amax(-1, keepdim=True), entropy_score], -1)


class OfficialScheduler(nn.Module):
    """g_k and h_k of exits 1..K as the official ``ScoreNormalizer`` s build them (ph:9-29), for M
    schedulers side by side (leading ``[M]``), all initialised alike.

    Exit k (1-based) has ``d_k = C + 1 + k`` inputs: :func:`official_features` and the scores of
    exits 1..k−1. Its parameters are padded to ``d = C + K`` inputs and ``H = ⌊0.5·d⌋`` hidden units
    and masked, so that each exit sees exactly its own inputs and hidden units; each is initialised
    as the official ``nn.Linear`` s are (U(±1/√fan_in)): g_k's first C weights (``q_layer_1``,
    fan-in C), its other 1 + k (``q_layer_2``, fan-in 1 + k), h_k's ``Linear(d_k, H_k)`` and
    ``Linear(H_k, 1)`` with biases.

    Args:
        num_exits: K.
        num_classes: C.
        models: M.
    """

    def __init__(self, num_exits: int, num_classes: int, models: int = 1):
        super().__init__()
        K, C, M = num_exits, num_classes, models
        d = C + 1 + K
        fan = torch.arange(C + 2, C + 2 + K)                                            # d_k, k = 1..K
        width = (fan.double() * HIDDEN_RATE).floor().long()                            # H_k = int(d_k · 0.5)
        H = int(width.max())
        self.num_classes = C
        self.register_buffer("in_mask", (torch.arange(d)[None] < fan[:, None]).float())          # [K, d]
        self.register_buffer("hidden_mask", (torch.arange(H)[None] < width[:, None]).float())    # [K, H]

        def uniform(bound: torch.Tensor, *shape: int) -> torch.Tensor:
            return (torch.rand(*shape) * 2 - 1) * bound

        g_bound = torch.cat([torch.full((K, C), C ** -0.5), (fan - C)[:, None].rsqrt().expand(K, d - C)], 1)
        g = uniform(g_bound, K, d) * self.in_mask
        w1 = uniform(fan.float().rsqrt()[:, None, None], K, d, H) * self.in_mask[..., None] * self.hidden_mask[:, None]
        b1 = uniform(fan.float().rsqrt()[:, None], K, H) * self.hidden_mask
        w2 = uniform(width.float().rsqrt()[:, None], K, H) * self.hidden_mask
        b2 = uniform(width.float().rsqrt(), K)

        def stacked(t: torch.Tensor) -> nn.Parameter:
            return nn.Parameter(t.expand(M, *t.shape).clone())

        self.g_weight, self.h_weight1, self.h_bias1 = stacked(g), stacked(w1), stacked(b1)
        self.h_weight2, self.h_bias2 = stacked(w2), stacked(b2)

    @property
    def num_exits(self) -> int:
        return self.in_mask.shape[0]

    def _u(self, x: torch.Tensor, earlier: torch.Tensor, k: int) -> torch.Tensor:
        """Exit k's (0-based) input ``[M, N, d]``: features ``[N, C + 2]``, earlier scores ``[M, N, k]``, zero-padded."""
        M, N = earlier.shape[:2]
        pad = x.new_zeros(M, N, self.in_mask.shape[1] - x.shape[-1] - k)
        return torch.cat([x.expand(M, N, -1), earlier, pad], -1)

    def _g(self, u: torch.Tensor, k: int) -> torch.Tensor:
        return torch.einsum("mnd,md->mn", u, self.g_weight[:, k] * self.in_mask[k])

    def _h(self, u: torch.Tensor, k: int) -> torch.Tensor:
        w1 = self.h_weight1[:, k] * self.in_mask[k][:, None] * self.hidden_mask[k]
        hidden = torch.sigmoid(torch.einsum("mnd,mdh->mnh", u, w1) + (self.h_bias1[:, k] * self.hidden_mask[k])[:, None])
        return torch.sigmoid(torch.einsum("mnh,mh->mn", hidden, self.h_weight2[:, k] * self.hidden_mask[k])
                             + self.h_bias2[:, k, None])

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training pass (``ExitAssigner.compute_loss``, ph:56-72): features ``[N, K, C + 2]`` →
        ``(g, h)``, each ``[M, N, K]``: the raw scores g (clamp them for the loss) and the sigmoid
        outputs of h (r̂ = softmax over k). Exit k sees the clamped, detached scores of exits < k."""
        M, (N, K, _) = self.g_weight.shape[0], features.shape
        g, h, earlier = [], [], features.new_zeros(M, N, 0)
        for k in range(K):
            u = self._u(features[:, k], earlier, k)
            g.append(self._g(u, k))
            h.append(self._h(u, k))
            earlier = torch.cat([earlier, g[-1].detach().clamp(0, 1)[..., None]], -1)
        return torch.stack(g, -1), torch.stack(h, -1)

    @torch.no_grad()
    def test_scores(self, features: torch.Tensor) -> torch.Tensor:
        """The test pass (``test_exit_assigner``, pu:139-150): features ``[N, K, C + 2]`` → raw scores
        ``[M, N, K]``, each exit seeing the raw (unclamped) scores of the exits before it."""
        M, (N, K, _) = self.g_weight.shape[0], features.shape
        earlier = features.new_zeros(M, N, 0)
        for k in range(K):
            earlier = torch.cat([earlier, self._g(self._u(features[:, k], earlier, k), k)[..., None]], -1)
        return earlier

    def gate_muladds(self) -> list[int]:
        """Mul-Adds of g_k for k < K: bias-free, C + 1 + k inputs (h_k does not run at test time)."""
        C = self.num_classes
        return [module_muladds(nn.Linear(C + 1 + k, 1, bias=False), torch.zeros(1, C + 1 + k))
                for k in range(1, self.num_exits)]


def official_losses(g: torch.Tensor, h: torch.Tensor, q: torch.Tensor, exit_costs: torch.Tensor,
                    budget: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The official scheduler's three losses on a mini-batch (``ExitAssigner.compute_loss``, ph:76-97).

    Args:
        g: ``[M, N, K]`` raw scores; h: ``[M, N, K]`` sigmoid outputs of h_k (r̂ = softmax_k h).
        q: ``[N, K]`` 1[exit k is correct].
        exit_costs: ``[K]`` c_k; budget: ``[M]`` B of each scheduler.

    Returns:
        ``(L_BCE, L_KL, L_cost)``, each ``[M]``: see the module docstring.
    """
    N, K = q.shape
    s = g.clamp(0, 1)
    log_r_hat = h.log_softmax(-1)
    r_hat = log_r_hat.exp()
    with torch.no_grad():
        w = r_hat / r_hat.sum(-2, keepdim=True)
        t = s.detach() ** BETA
        t = t / t.sum(-1, keepdim=True).clamp_min(torch.finfo(t.dtype).tiny)
    l_bce = (w * F.binary_cross_entropy(s, q.expand_as(s), reduction="none")).sum((-2, -1)) / K
    l_kl = F.kl_div(log_r_hat, t, reduction="none").mean((-2, -1))
    l_cost = ((r_hat * exit_costs).sum((-2, -1)) / N - budget).abs() / budget
    return l_bce, l_kl, l_cost


def phases(steps: int, n: int, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, bool]]:
    """``(rows, bce_phase)`` of each of ``steps`` Adam steps: one permutation of the ``n`` samples
    drawn once, walked in consecutive mini-batches epoch after epoch (ph:182, 203-206); the epochs
    e with ⌊e / PERIOD⌋ even are BCE epochs (ph:193-199)."""
    perm = torch.randperm(n, generator=generator)
    step, epoch = 0, 0
    while True:
        for start in range(0, n, batch_size):
            if step == steps:
                return
            yield perm[start:start + batch_size], (epoch // PERIOD) % 2 == 0
            step += 1
        epoch += 1


def train_official(features: torch.Tensor, q: torch.Tensor, costs: torch.Tensor,
                   settings: list[tuple[float, float, float]], params: dict[str, Any], generator: torch.Generator,
                   progress: Any) -> OfficialScheduler:
    """Train one official scheduler per (B, α_ce, α_cost) of ``settings`` side by side on the policy
    split: ``scorer_steps`` Adam steps of ``L_BCE·[BCE phase] + (α_ce·L_KL + α_cost·L_cost)·[other
    phase]``, gradients zeroed before each backward pass (the fix of ph:207-208).

    Args:
        features: ``[N, K, C + 2]`` (:func:`official_features`); q: ``[N, K]``; costs: ``[K]``.
    """
    K, C = features.shape[1], features.shape[2] - 2
    scheduler = OfficialScheduler(K, C, models=len(settings))
    B, a_ce, a_cost = (torch.tensor(col, dtype=torch.float32) for col in zip(*settings))
    opt = torch.optim.Adam(scheduler.parameters(), lr=params["scorer_lr"], weight_decay=params["scorer_weight_decay"])
    total = int(params["scorer_steps"])
    with progress("eenet official schedulers", total) as bar:
        for step, (idx, bce_phase) in enumerate(phases(total, features.shape[0], int(params["scorer_batch_size"]),
                                                       generator)):
            g, h = scheduler(features[idx])
            l_bce, l_kl, l_cost = official_losses(g, h, q[idx], costs, B)
            loss = (l_bce * bce_phase + (a_ce * l_kl + a_cost * l_cost) * (not bce_phase)).sum()
            check_finite(loss, f"eenet (scorer official), scheduler step {step + 1}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(1)
    scheduler.eval()
    return scheduler


def official_thresholds(scores: torch.Tensor, r_hat: torch.Tensor) -> np.ndarray:
    """``ExitAssigner.compute_threshold`` (ph:139-166) with T_K = −∞.

    Args:
        scores: ``[N, K]`` raw training-pass scores of the policy split; r_hat: ``[N, K]``.

    Returns:
        ``[K]`` float64: for k < K, with n_k = ⌊mean_n r̂_{n,k}·N⌋ (float32 product, as ph:150),
        T_k = 1 where n_k = 0, else the n_k-th highest score among the samples left, and exactly
        those n_k samples (by sort order) leave; T_K = −∞.
    """
    n, K = scores.shape
    mean = r_hat.float().mean(0)
    T = np.full(K, -np.inf)
    left = scores.float()
    for k in range(K - 1):
        count = math.floor(mean[k] * n)
        if count == 0:
            T[k] = EMPTY_THRESHOLD
            continue
        order = left[:, k].argsort()
        T[k] = float(left[order[-count], k])
        left = left[order[:-count]]
    return T


def official_exits(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Exit at the first k with raw score ≥ T_k (pu:349-361), else at K. ``[N, K]``, ``[K]`` → ``[N]`` 0-based."""
    passed = np.asarray(scores, dtype=np.float64) >= thresholds[None, :]
    passed[:, -1] = True
    return passed.argmax(1)


class EENetOfficialRule(ExitRule):
    """The official test rule for scheduler ``m``, exit by exit: exit k's raw score g_k on
    (:func:`official_features` of p_k, the raw scores of exits < k), exit where g_k ≥ T_k.
    The state is those earlier scores, ``[B, k − 1]``."""

    def __init__(self, ims: nn.ModuleList, scheduler: OfficialScheduler, m: int, thresholds: np.ndarray):
        self.ims, self.scheduler, self.m = ims, scheduler, m
        self.thresholds, self.modules = [float(t) for t in thresholds], [ims, scheduler]

    def at_exit(self, k: int, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, torch.Tensor, Any]:
        probs = self.ims[k - 1](x).softmax(-1)                                          # [B, C]
        earlier = probs.new_zeros(probs.shape[0], 0) if state is None else state
        s, i = self.scheduler, k - 1
        u = s._u(official_features(probs[:, None])[:, 0], earlier[None], i)            # [1, B, d]
        g = torch.einsum("mnd,md->mn", u, (s.g_weight[self.m:self.m + 1, i] * s.in_mask[i]).detach())[0]
        return g.double() >= self.thresholds[i], probs, torch.cat([earlier, g[:, None]], -1)


class EENetOfficialFitted(FittedMethod):
    """IMs shared by every budget; the chosen official schedulers (stacked) and one threshold vector per budget."""

    def __init__(self, ims: nn.ModuleList, scheduler: OfficialScheduler,
                 chosen: list[tuple[dict[str, Any], int, np.ndarray]], gate_muladds: list[int]):
        self.ims, self.scheduler, self.chosen, self.gate_muladds = ims, scheduler, chosen, gate_muladds

    @torch.no_grad()
    def predict(self, split: SplitFeatures) -> list[OperatingPoint]:
        probs = exit_probs(self.ims, split)
        scores = self.scheduler.test_scores(official_features(probs))
        return [OperatingPoint(dict(setting), official_exits(scores[m].double().numpy(), T), probs,
                               self.gate_muladds) for setting, m, T in self.chosen]

    def exit_rules(self) -> list[ExitRule]:
        """One :class:`EENetOfficialRule` per budget."""
        return [EENetOfficialRule(self.ims, self.scheduler, m, T) for _, m, T in self.chosen]

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """IMs, the M stacked schedulers and the ``[budgets, K]`` float64 thresholds; settings: the
        scorer, each budget's setting and scheduler index, the schedulers' shape."""
        T = torch.as_tensor(np.stack([t for _, _, t in self.chosen]), dtype=torch.float64)
        return pack(ims=self.ims, scheduler=self.scheduler, thresholds=T), {
            "scorer": "official", "chosen": [[setting, m] for setting, m, _ in self.chosen],
            "gate_muladds": self.gate_muladds, "models": int(self.scheduler.g_weight.shape[0]),
            "num_classes": self.scheduler.num_classes}
