"""Confidence-threshold exit policies: the MSDNet threshold search, written once.

Used by the threshold baseline (§1), BoostedNet (§2), L2W-DEN (§3) and EENet's thresholds (§4)
of ``methods.md``. Scores are "higher means more ready to exit" (max softmax, or EENet's q̂).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from eebench.harness.features import SplitFeatures
from eebench.harness.method import ExitRule, FittedMethod, OperatingPoint, pack


def budget_shares(q: float, num_exits: int) -> np.ndarray:
    """Target exit shares π_k ∝ q^k, k = 1..K, normalised to sum 1 (MSDNet budgeted batch
    classification, Huang et al. ICLR 2018, §4 / ``adaptive_inference.py``). ``[K]``.

    Raises:
        ValueError: q ≤ 0.
    """
    if q <= 0:
        raise ValueError(f"q must be positive, got {q}")
    p = np.power(float(q), np.arange(1, num_exits + 1, dtype=float))
    return p / p.sum()


def thresholds_from_counts(scores: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The MSDNet threshold search for given per-exit exit counts (``methods.md`` §1, §4).

    Go through exits k = 1..K−1 in order; among samples not yet exited, sort by score at k;
    T_k is the score of the counts[k]-th highest one; every remaining sample with score ≥ T_k
    exits. If counts[k] = 0, or fewer than counts[k] samples remain, nobody exits at k
    (T_k = +∞, as in ``adaptive_inference.py`` of kalviny/MSDNet-PyTorch). T_K = −∞.

    Args:
        scores: ``[N, K]`` exit scores (column K is not used).
        counts: ``[K]`` target numbers of samples per exit (entry K is not used).

    Returns:
        ``[K]`` float thresholds.
    """
    n, K = scores.shape
    T = np.full(K, np.inf)
    T[-1] = -np.inf
    remaining = np.ones(n, dtype=bool)
    for k in range(K - 1):
        c = int(counts[k])
        pool = scores[remaining, k]
        if 0 < c <= pool.size:
            T[k] = np.sort(pool)[::-1][c - 1]
            remaining &= ~(scores[:, k] >= T[k])
    return T


def msdnet_thresholds(scores: np.ndarray, q: float) -> np.ndarray:
    """Thresholds for budget level q: counts n_k = ⌊N·π_k⌋ with π_k ∝ q^k, counted on the whole set.

    (A 1e-9 guard keeps ⌊·⌋ from dropping a sample when N·π_k is an integer up to rounding.)
    """
    n, K = scores.shape
    counts = np.floor(n * budget_shares(q, K) + 1e-9).astype(int)
    return thresholds_from_counts(scores, counts)


def apply_thresholds(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Test rule: exit at the first k with score_k ≥ T_k (T_K = −∞ catches the rest). ``[N]`` 0-based."""
    passed = scores >= thresholds[None, :]
    passed[:, -1] = True
    return passed.argmax(axis=1)


#: MSDNet's budget grid: q ∈ {0.05, 0.10, …, 1.95}, 39 values.
Q_GRID: list[float] = [round(0.05 * i, 2) for i in range(1, 40)]


class ExitSteps:
    """A :class:`ThresholdPolicy`'s ``probs_fn`` in sequential form: the probabilities of exit k
    from its IM input and what the exits before it left (``state``, see :class:`~eebench.harness.method.ExitRule`).

    Attributes:
        modules: the modules it runs.
    """

    modules: list[torch.nn.Module]

    def at_exit(self, k: int, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """Exit ``k`` < K (1-based): IM input ``[B, D_k]`` → ``(probs [B, C], state)``."""
        raise NotImplementedError

    def at_last(self, logits: torch.Tensor, state: Any) -> torch.Tensor:
        """Exit K: the backbone's logits ``[B, C]`` → ``[B, C]`` probabilities."""
        return logits.softmax(-1)


class IMSteps(ExitSteps):
    """Softmax of each plain IM's logits (:func:`eebench.harness.training.exit_probs`, exit by exit)."""

    def __init__(self, ims: torch.nn.ModuleList):
        self.ims, self.modules = ims, [ims]

    def at_exit(self, k: int, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        return self.ims[k - 1](x).softmax(-1), None


class ThresholdRule(ExitRule):
    """Exit at k when the max softmax of exit k reaches T_k (:func:`apply_thresholds`, exit by exit).

    Args:
        steps: the probabilities of each exit.
        thresholds: ``[K]`` float64 thresholds of one budget level.
    """

    def __init__(self, steps: ExitSteps, thresholds: np.ndarray):
        self.steps, self.thresholds, self.modules = steps, [float(t) for t in thresholds], steps.modules

    def at_exit(self, k: int, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, torch.Tensor, Any]:
        probs, state = self.steps.at_exit(k, x, state)
        return probs.amax(-1).double() >= self.thresholds[k - 1], probs, state

    def at_last(self, logits: torch.Tensor, state: Any) -> torch.Tensor:
        return self.steps.at_last(logits, state)


class ThresholdPolicy(FittedMethod):
    """A fitted confidence-threshold exit policy: one operating point per budget level q.

    Thresholds are searched on ``val`` once per q of ``q_grid`` (:func:`msdnet_thresholds` on the
    max softmax of each exit); :meth:`predict` applies them to any split. Serves the threshold
    baseline, BoostedNet and L2W-DEN, which differ only in how they train the IMs and what
    ``probs_fn`` returns.

    Args:
        probs_fn: split features → ``[N, K, C]`` probabilities of every exit.
        val: the validation split's features (None with ``thresholds``).
        q_grid: budget levels (default :data:`Q_GRID`).
        modules: the modules ``probs_fn`` runs (``{"ims": ...}``), saved by :meth:`state`.
        settings: what else the method needs to rebuild ``probs_fn`` (e.g. BoostedNet's γ).
        thresholds: ``[Q, K]`` thresholds already searched (a restored policy), instead of ``val``.
        steps: ``probs_fn`` exit by exit, for :meth:`exit_rules` (None: the policy has no runtime).
    """

    def __init__(self, probs_fn: Callable[[SplitFeatures], torch.Tensor], val: SplitFeatures | None,
                 q_grid: Sequence[float] | None = None, modules: dict[str, torch.nn.Module] | None = None,
                 settings: dict[str, Any] | None = None, thresholds: torch.Tensor | None = None,
                 steps: ExitSteps | None = None):
        self.probs_fn, self.steps = probs_fn, steps
        self.q_grid = list(q_grid if q_grid is not None else Q_GRID)
        self.modules, self.settings = dict(modules or {}), dict(settings or {})
        if thresholds is None:
            conf = probs_fn(val).amax(-1).numpy()
            self.thresholds = {q: msdnet_thresholds(conf, q) for q in self.q_grid}
        else:
            self.thresholds = {q: T.numpy() for q, T in zip(self.q_grid, thresholds.double())}
        self.gate_muladds = [0] * (len(next(iter(self.thresholds.values()))) - 1)

    def predict(self, split: SplitFeatures) -> list[OperatingPoint]:
        """Operating points ``[{q: ...}]`` on ``split``, sharing one ``[N, K, C]`` probability tensor."""
        probs = self.probs_fn(split)
        conf = probs.amax(-1).numpy()
        return [OperatingPoint({"q": q}, apply_thresholds(conf, T), probs, self.gate_muladds)
                for q, T in self.thresholds.items()]

    def exit_rules(self) -> list[ExitRule]:
        """One :class:`ThresholdRule` per budget level q.

        Raises:
            NotImplementedError: the policy was built without ``steps``.
        """
        if self.steps is None:
            raise NotImplementedError("this threshold policy has no sequential form (built without steps)")
        return [ThresholdRule(self.steps, T) for T in self.thresholds.values()]

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The modules and the ``[Q, K]`` float64 thresholds; settings: ``q_grid`` and :attr:`settings`."""
        T = torch.as_tensor(np.stack(list(self.thresholds.values())), dtype=torch.float64)
        return pack(**self.modules, thresholds=T), {**self.settings, "q_grid": self.q_grid}


def ims_policy(ims: torch.nn.ModuleList, val: SplitFeatures | None, q_grid: Sequence[float],
               thresholds: torch.Tensor | None = None) -> ThresholdPolicy:
    """Thresholds on the max softmax of K−1 plain IMs and the frozen classifier (the threshold
    baseline, L2W-DEN): searched on ``val``, or given (``[Q, K]``, a restored policy)."""
    from eebench.harness.training import exit_probs

    return ThresholdPolicy(lambda split: exit_probs(ims, split), val, q_grid, {"ims": ims}, thresholds=thresholds,
                           steps=IMSteps(ims))
