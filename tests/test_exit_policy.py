"""The MSDNet threshold search (methods.md §1) against hand-computed values."""
import numpy as np
import pytest

from eebench.harness.exit_policy import (Q_GRID, apply_thresholds, budget_shares, msdnet_thresholds, thresholds_from_counts)

SCORES = np.array([  # [N=6, K=3]; column 3 is never used
    [0.90, 0.10, 0.0],
    [0.80, 0.95, 0.0],
    [0.70, 0.90, 0.0],
    [0.60, 0.30, 0.0],
    [0.50, 0.85, 0.0],
    [0.40, 0.20, 0.0],
])


def test_threshold_search_by_hand():
    # exit 1: 2nd highest of all six = 0.80 -> samples 0, 1 exit.
    # exit 2: among samples 2..5 (0.90, 0.30, 0.85, 0.20), 2nd highest = 0.85 -> samples 2, 4 exit.
    T = thresholds_from_counts(SCORES, np.array([2, 2, 2]))
    assert T[0] == 0.80 and T[1] == 0.85 and T[2] == -np.inf
    assert apply_thresholds(SCORES, T).tolist() == [0, 0, 1, 2, 1, 2]


def test_zero_count_and_too_few_remaining():
    T = thresholds_from_counts(SCORES, np.array([0, 5, 0]))
    assert T[0] == np.inf                      # n_1 = 0: nobody exits at 1
    assert T[1] == 0.20                        # 5th highest of all six at exit 2 (.95 .90 .85 .30 .20)
    T = thresholds_from_counts(SCORES, np.array([5, 2, 0]))
    assert T[0] == 0.50                        # five exit at 1, one remains
    assert T[1] == np.inf                      # 2 > 1 remaining: nobody exits (MSDNet's rule)
    assert apply_thresholds(SCORES, T).tolist() == [0, 0, 0, 0, 0, 2]


def test_budget_shares():
    assert np.allclose(budget_shares(0.5, 3), [4 / 7, 2 / 7, 1 / 7])
    assert np.allclose(budget_shares(1.0, 4), [0.25] * 4)
    with pytest.raises(ValueError):
        budget_shares(0.0, 3)
    assert len(Q_GRID) == 39 and Q_GRID[0] == 0.05 and Q_GRID[-1] == 1.95


def test_msdnet_counts_on_whole_set():
    # q = 0.5, K = 3, N = 7: n = floor(7 * [4/7, 2/7, 1/7]) = [4, 2, 1]
    rng = np.random.default_rng(0)
    scores = rng.random((7, 3))
    T = msdnet_thresholds(scores, 0.5)
    exits = apply_thresholds(scores, T)
    assert np.bincount(exits, minlength=3).tolist() == [4, 2, 1]
    assert T[0] == np.sort(scores[:, 0])[::-1][3]


def test_ties_all_exit():
    scores = np.array([[0.5, 0.1], [0.5, 0.1], [0.5, 0.1], [0.2, 0.1]])
    T = thresholds_from_counts(scores, np.array([1, 0]))
    assert apply_thresholds(scores, T).tolist() == [0, 0, 0, 1]   # every score >= T_1 exits
