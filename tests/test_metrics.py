"""ECE, conformal sets and the per-point metrics against hand-computed values."""
import math

import numpy as np
import pytest
import torch

from eebench.harness.method import OperatingPoint
from eebench.harness.metrics import (ALPHAS, conformal_exit_quantiles, conformal_quantile, conformal_sets, ece, evaluate)


def test_ece_by_hand():
    conf = np.array([0.95, 0.95, 0.55, 0.55])
    correct = np.array([1, 0, 1, 1], dtype=bool)
    # bin (14/15, 1]: acc 0.5, conf 0.95 -> 0.5 * 0.45; bin (8/15, 9/15]: acc 1, conf 0.55 -> 0.5 * 0.45
    assert ece(conf, correct) == pytest.approx(0.45)


def test_ece_bin_edges_are_right_closed():
    # 2/15 belongs to bin (1/15, 2/15], together with 0.1; 0.2 is in (2/15, 3/15]
    conf = np.array([2 / 15, 0.1, 0.2])
    correct = np.array([1, 0, 1], dtype=bool)
    expected = (2 / 3) * abs(0.5 - (2 / 15 + 0.1) / 2) + (1 / 3) * abs(1 - 0.2)
    assert ece(conf, correct) == pytest.approx(expected)


def test_ece_perfect_and_mass_bins():
    assert ece(np.ones(10), np.ones(10, dtype=bool)) == 0.0
    conf = np.array([0.1, 0.2, 0.9, 0.8])
    correct = np.array([0, 0, 1, 1], dtype=bool)
    # 2 equal-mass bins: {0.1, 0.2} acc 0 conf 0.15; {0.8, 0.9} acc 1 conf 0.85
    assert ece(conf, correct, n_bins=2, binning="mass") == pytest.approx(0.15)


def test_conformal_quantile_rank():
    s = np.arange(1, 10) / 10.0     # n = 9
    assert conformal_quantile(s, 0.1) == pytest.approx(0.9)    # ceil(10 * 0.9) = 9th
    assert conformal_quantile(s, 0.2) == pytest.approx(0.8)    # ceil(10 * 0.8) = 8th
    assert conformal_quantile(s, 0.05) == math.inf              # ceil(9.5) = 10 > n


def _exchangeable(n: int, K: int, C: int, rng: np.random.Generator):
    logits = rng.normal(size=(n, K, C)) * np.linspace(0.5, 3, K)[None, :, None]
    p64 = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    labels = np.array([rng.choice(C, p=p64[i, -1]) for i in range(n)])   # y ~ the last exit's p
    probs = torch.tensor(p64, dtype=torch.float32)
    exits = np.minimum((probs.amax(-1).numpy() >= 0.6).argmax(1), K - 1)  # a function of x only
    exits[(probs.amax(-1).numpy() < 0.6).all(1)] = K - 1
    return probs, labels, exits


def test_conformal_coverage_on_exchangeable_data():
    rng = np.random.default_rng(0)
    n, K, C, alpha = 1200, 3, 5, 0.1
    covers = []
    for trial in range(60):
        probs, labels, exits = _exchangeable(n, K, C, rng)
        perm = rng.permutation(n)
        cal, test = perm[:600], perm[600:]
        p_cal = OperatingPoint({}, exits[cal], probs[cal])
        p_test = OperatingPoint({}, exits[test], probs[test])
        sets = conformal_sets(p_test, conformal_exit_quantiles(p_cal, labels[cal], alpha))
        covers.append(sets[np.arange(len(test)), labels[test]].mean())
    # marginal guarantee: E[coverage] >= 1 - alpha (the mean over 60 splits has std ~ 0.002)
    assert np.mean(covers) >= 1 - alpha - 0.005
    assert np.mean(covers) <= 1 - alpha + 0.03     # and not trivially by huge sets


def test_conformal_fallback_when_few_exit():
    probs = torch.tensor([[[0.7, 0.3], [0.9, 0.1]]] * 30)   # [30, K=2, C=2]
    labels = np.zeros(30, dtype=int)
    exits = np.array([0] * 5 + [1] * 25)                     # only 5 < 20 exit at 0
    q = conformal_exit_quantiles(OperatingPoint({}, exits, probs), labels, 0.1)
    assert q[0] == pytest.approx(0.3)    # all 30 calib samples scored at IM 0: 1 - 0.7
    assert q[1] == pytest.approx(0.1)    # the 25 that exit at 1: 1 - 0.9


def test_evaluate_by_hand():
    # 4 samples, K = 2, C = 2
    probs = torch.tensor([[[0.8, 0.2], [0.6, 0.4]],
                          [[0.3, 0.7], [0.1, 0.9]],
                          [[0.55, 0.45], [0.2, 0.8]],
                          [[0.9, 0.1], [0.3, 0.7]]])
    labels = np.array([0, 1, 1, 1])
    point = OperatingPoint({"q": 1}, np.array([0, 1, 1, 0]), probs)
    m = evaluate(point, labels, None, None, np.array([0.5, 1.1]), np.array([50.0, 110.0]))
    # answered: [0.8,0.2] ok, [0.1,0.9] ok, [0.2,0.8] ok, [0.9,0.1] wrong
    assert m["accuracy"] == 0.75
    assert m["cost"] == pytest.approx(0.8) and m["muladds"] == pytest.approx(80.0)
    assert m["exit_shares"] == [0.5, 0.5]
    assert m["exit_accuracy"] == [0.5, 1.0]
    assert m["im_accuracy"] == [0.5, 1.0]    # IM 1 right on samples 0, 1; IM 2 on all four
    assert "conformal" not in m
    m = evaluate(point, labels, point, labels, np.array([0.5, 1.1]), np.array([50.0, 110.0]))
    assert m["conformal"]["alpha"] == ALPHAS and len(m["conformal"]["coverage"]) == 10
