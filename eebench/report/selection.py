"""Choosing operating points on val, and the curve arithmetic of the leaderboard.

Every figure the suite ranks on is a **val-selected** one: for a budget B (a mean normalised
cost), each run deploys the operating point with the highest val accuracy among its points whose
val cost is ≤ B (ties: the lower val cost, then the earlier point); the figure is that point's
*test* accuracy, cost, ECE or inefficiency. A run with no point of val cost ≤ B has no figure at B.
The test split enters no choice.

- :func:`select` — the deployed point of each budget;
- :func:`selection_intervals` — the budgets over which each point is deployed, for the area under
  the val-selected curve over a common range of budgets (:func:`auc_weights`);
- :func:`cheapest_within` — the cheapest point (by val cost) whose val accuracy is within a
  tolerance of a target (the cost at which a run reaches the backbone's accuracy − 1 point).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from eebench.errors import UsageError

#: Splits a figure may be selected on: ``val`` (the protocol) or ``test`` (only to measure how much
#: choosing on test would flatter a method; never for a ranking).
SELECTION_SPLITS: tuple[str, ...] = ("val", "test")


def check_budgets(budgets: Sequence[float]) -> list[float]:
    """The budgets as floats.

    Raises:
        UsageError: none given, or one outside (0, ∞).
    """
    out = [float(b) for b in budgets]
    if not out or any(not (b > 0 and math.isfinite(b)) for b in out):
        raise UsageError(f"budgets {list(budgets)}: each must be a normalised cost in (0, inf), e.g. 0.25,0.5,0.75,1")
    return out


def check_selection_split(split: str) -> str:
    """``split`` if it is one of :data:`SELECTION_SPLITS`.

    Raises:
        UsageError: another name.
    """
    if split not in SELECTION_SPLITS:
        raise UsageError(f"selection split {split!r}: must be one of {', '.join(SELECTION_SPLITS)}")
    return split


def _order(cost: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """Point indices by cost, then accuracy (higher first), then index."""
    return np.lexsort((np.arange(len(cost)), -accuracy, cost))


def select(cost: np.ndarray, accuracy: np.ndarray, budgets: Sequence[float] | np.ndarray) -> np.ndarray:
    """The deployed point at each budget: the most accurate point of cost ≤ B (ties: the cheaper,
    then the earlier).

    Args:
        cost, accuracy: ``[P]`` the points' figures on the selection split (NaN: never chosen).
        budgets: ``[G]`` budgets.

    Returns:
        ``[G]`` int point indices, −1 where no point has cost ≤ B.
    """
    cost, accuracy = np.asarray(cost, float), np.asarray(accuracy, float)
    ok = np.isfinite(cost) & np.isfinite(accuracy)
    steps_c, steps_i, best = [], [], -math.inf
    for i in _order(np.where(ok, cost, np.inf), np.where(ok, accuracy, -np.inf)):
        if ok[i] and accuracy[i] > best:
            best = accuracy[i]
            steps_c.append(cost[i])
            steps_i.append(i)
    b = np.atleast_1d(np.asarray(budgets, float))
    j = np.searchsorted(np.asarray(steps_c, float), b, side="right") - 1
    return np.where(j >= 0, np.asarray(steps_i + [-1], int)[np.clip(j, 0, None)], -1)


def selection_intervals(cost: np.ndarray, accuracy: np.ndarray, lo: float, hi: float) -> dict[int, float]:
    """For budgets uniform on [lo, hi], the share of budgets at which each point is deployed
    (:func:`select`).

    Returns:
        point index → share (the shares sum to 1 when a point is deployed at ``lo``; budgets with
        no deployed point are left out).

    Raises:
        ValueError: ``hi`` ≤ ``lo``.
    """
    if not hi > lo:
        raise ValueError(f"empty budget range [{lo}, {hi}]")
    cost = np.asarray(cost, float)
    cuts = np.unique(np.concatenate([[lo, hi], cost[np.isfinite(cost) & (cost > lo) & (cost < hi)]]))
    chosen = select(cost, accuracy, cuts[:-1])        # constant on [cuts[i], cuts[i+1])
    out: dict[int, float] = {}
    for i, w in zip(chosen, np.diff(cuts) / (hi - lo)):
        if i >= 0:
            out[int(i)] = out.get(int(i), 0.0) + float(w)
    return out


def cheapest_within(cost: np.ndarray, accuracy: np.ndarray, target: float) -> int:
    """The point of lowest cost whose accuracy is ≥ ``target`` (ties: the more accurate, then the
    earlier), or −1 if none."""
    cost, accuracy = np.asarray(cost, float), np.asarray(accuracy, float)
    ok = np.flatnonzero(np.isfinite(cost) & (accuracy >= target))
    if not ok.size:
        return -1
    return int(ok[_order(cost[ok], accuracy[ok])[0]])
