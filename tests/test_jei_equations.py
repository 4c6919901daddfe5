"""JEI-DNN's equations (methods.md §6) against hand-computed values."""
import math

import pytest
import torch

from methods.jei import exit_decision, exit_distribution, gate_features, gate_targets


@pytest.mark.parametrize("g, expected", [
    # P_l = max(0, min(g_l, 1 - sum_{j<l} g_j)); P_K = 1 - sum_{l<K} P_l
    ([0.1, 0.2, 0.3], [0.1, 0.2, 0.3, 0.4]),          # no clipping
    ([0.3, 0.5, 0.4], [0.3, 0.5, 0.2, 0.0]),          # min(0.4, 1 - 0.8) = 0.2
    ([0.9, 0.5, 0.1], [0.9, 0.1, 0.0, 0.0]),          # min(0.5, 0.1); max(0, min(0.1, -0.4)) = 0
    ([0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]),          # everything to the last exit
])
def test_exit_distribution(g, expected):
    P = exit_distribution(torch.tensor([g]))
    assert torch.allclose(P, torch.tensor([expected]), atol=1e-6)
    assert torch.allclose(P.sum(-1), torch.ones(1))


@pytest.mark.parametrize("P, exit_1based", [
    # e_l = P_l / (1 - sum_{j<l} P_j); first l with e_l >= 0.5, else K
    ([0.6, 0.2, 0.1, 0.1], 1),                 # e_1 = 0.6
    ([0.3, 0.5, 0.2, 0.0], 2),                 # e_1 = 0.3, e_2 = 0.5/0.7 = 0.714
    ([0.1, 0.2, 0.3, 0.4], 4),                 # e = 0.1, 0.222, 0.429 -> K
    ([0.2, 0.3, 0.25, 0.25], 3),               # e_3 = 0.25/0.5 = 0.5 exactly: exits
    ([0.4, 0.35, 0.25, 0.0], 2),               # e_2 = 0.35/0.6 = 0.583
])
def test_exit_decision(P, exit_1based):
    assert exit_decision(torch.tensor([P])).item() == exit_1based - 1


def test_exit_decision_batch_matches_rows():
    P = exit_distribution(torch.rand(64, 5))
    batch = exit_decision(P)
    rows = torch.stack([exit_decision(P[i:i + 1])[0] for i in range(64)])
    assert torch.equal(batch, rows)


def test_gate_targets():
    costs = torch.tensor([0.25, 0.5, 0.75, 1.0])
    losses = torch.tensor([[2.0, 0.3, 0.2, 0.1],    # lam=1: C = 2.25, 0.80, 0.95, 1.10 -> l* = 2
                           [0.1, 0.1, 0.1, 0.1],    # lam=1: l* = 1 (cheapest)
                           [2.0, 1.0, 0.5, 0.1]])   # lam=1: C = 2.25, 1.5, 1.25, 1.1 -> l* = 4
    t = gate_targets(losses, costs, 1.0)
    assert t.tolist() == [[0, 1, 1], [1, 1, 1], [0, 0, 0]]
    # lam = 0.1: C row 1 = 2.025, 0.35, 0.275, 0.2 -> l* = 4 -> no gate fires
    assert gate_targets(losses[:1], costs, 0.1).tolist() == [[0, 0, 0]]


def test_gate_features():
    p = torch.tensor([0.5, 0.3, 0.2])
    f = gate_features(p.log()[None])[0]
    entropy = -sum(x * math.log(x) for x in p.tolist())
    sharp = (p ** 2) / (p ** 2).sum()          # softmax(2 z) with z = log p
    entropy_sharp = -sum(x * math.log(x) for x in sharp.tolist())
    assert torch.allclose(f, torch.tensor([0.5, entropy, 0.2, entropy_sharp]), atol=1e-6)
