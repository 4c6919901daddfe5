"""EENet's equations (methods.md §4) against hand-computed values."""
import math

import numpy as np
import pytest
import torch

from eebench.errors import ConfigError
from eebench.harness.exit_policy import apply_thresholds
from methods.eenet import (EENetScheduler, auto_budgets, confidence_features, eenet_losses, eenet_targets, eenet_thresholds,
                           feasible_budgets)


def test_confidence_features():
    probs = torch.tensor([[[0.5, 0.5], [0.2, 0.8], [0.1, 0.9], [1.0, 0.0]]])       # N=1, K=4, C=2
    f = confidence_features(probs)[0]
    ent = lambda p: 1 + sum(x * math.log(x) for x in p if x > 0) / math.log(2)   # noqa: E731
    # max p; 1 + sum p log p / log C; votes: argmax = 0, 1, 1, 0 -> 1/1, max(1,1)/2, 2/3, max(2,2)/4
    expected = [[0.5, 0.0, 1.0], [0.8, ent([0.2, 0.8]), 0.5], [0.9, ent([0.1, 0.9]), 2 / 3], [1.0, 1.0, 0.5]]
    assert torch.allclose(f, torch.tensor(expected), atol=1e-6)


def test_targets_q_and_r():
    # labels 0: sample 1 correct at exits 1 and 3; sample 2 correct nowhere
    probs = torch.tensor([[[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]],
                          [[0.2, 0.8], [0.4, 0.6], [0.1, 0.9]]])
    q, r = eenet_targets(probs, torch.tensor([0, 0]))
    assert q.tolist() == [[1, 0, 1], [0, 0, 0]]
    assert torch.allclose(r, torch.tensor([[0.5, 0.0, 0.5], [1 / 3, 1 / 3, 1 / 3]]))


def _logit(p):
    return math.log(p / (1 - p))


def test_three_losses():
    h = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])          # r_hat = (0.25, 0.75), (0.5, 0.5)
    qhat = [[0.5, 0.75], [0.25, 0.5]]
    g = torch.tensor([[_logit(p) for p in row] for row in qhat])
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    r = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    costs, B = torch.tensor([0.4, 1.0]), 0.6
    l_g, l_ce, l_budget = eenet_losses(g, h, q, r, costs, B)
    # L_CE = -(1/(N K)) sum r log r_hat = -(1/4)(log 0.25 + 0.5 log 0.5 + 0.5 log 0.5)
    assert math.isclose(l_ce.item(), -(math.log(0.25) + math.log(0.5)) / 4, rel_tol=1e-6)
    # mean cost = mean(0.25*0.4 + 0.75*1, 0.5*0.4 + 0.5*1) = 0.775; |0.6 - 0.775| / 0.6
    assert math.isclose(l_budget.item(), 0.175 / 0.6, rel_tol=1e-6)
    # survival 1 - sum_{k'<k} r_hat: exit 1: (1, 1) -> w = (0.5, 0.5); exit 2: (0.75, 0.5) -> (0.6, 0.4)
    bce = [[-math.log(0.5), -math.log(0.25)], [-math.log(0.75), -math.log(0.5)]]
    expected = (0.5 * bce[0][0] + 0.5 * bce[1][0] + 0.6 * bce[0][1] + 0.4 * bce[1][1]) / 2
    assert math.isclose(l_g.item(), expected, rel_tol=1e-6)


def test_bce_weights_carry_no_gradient_to_the_assignment():
    h = torch.randn(5, 3, requires_grad=True)
    g = torch.randn(5, 3, requires_grad=True)
    q = torch.randint(0, 2, (5, 3)).float()
    l_g, _, _ = eenet_losses(g, h, q, torch.full((5, 3), 1 / 3), torch.tensor([0.3, 0.6, 1.0]), 0.5)
    dh, dg = torch.autograd.grad(l_g, [h, g], allow_unused=True)
    assert (dh is None or torch.count_nonzero(dh) == 0) and torch.count_nonzero(dg) > 0


def test_thresholds_from_mean_assignment_and_test_rule():
    scores = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.7, 0.3, 0.0],
                       [0.6, 0.9, 0.0], [0.5, 0.6, 0.0], [0.4, 0.2, 0.0]])
    r_hat = np.tile([1 / 3, 1 / 2, 1 / 6], (6, 1))               # counts floor(6 * mean) = 2, 3, 1
    T = eenet_thresholds(scores, r_hat)
    # exit 1: 2nd highest of all = 0.8 (samples 1, 2 exit); exit 2: 3rd highest of the rest
    # (0.3, 0.9, 0.6, 0.2) = 0.3 (samples 3, 4, 5 exit); T_K = -inf
    assert T[0] == 0.8 and T[1] == 0.3 and T[2] == -np.inf
    assert apply_thresholds(scores, T).tolist() == [0, 0, 1, 1, 1, 2]
    # a new sample that passes no threshold exits at the last exit, never dropped
    new = np.array([[0.85, 0.0, 0.0], [0.5, 0.35, 0.0], [0.5, 0.1, -5.0]])
    assert apply_thresholds(new, T).tolist() == [0, 1, 2]
    # floor: mean 0.3 of 6 samples -> 1 sample exits at exit 1
    T = eenet_thresholds(scores, np.tile([0.3, 0.0, 0.7], (6, 1)))
    assert T[0] == 0.9 and T[1] == np.inf


def test_scheduler_inputs_see_only_earlier_scores():
    torch.manual_seed(0)
    sched = EENetScheduler(4, hidden=8)
    feats = torch.rand(6, 4, 3)
    u = sched.inputs(feats)
    assert u.shape == (6, 4, 6)
    assert torch.equal(u[:, :, :3], feats)
    # exit k (1-based) sees q_hat_1..q_hat_{k-1}: exit 1 none, exit 4 three
    assert torch.count_nonzero(u[:, 0, 3:]) == 0 and torch.count_nonzero(u[:, 1, 4:]) == 0
    g_logits, _ = sched(feats)
    assert torch.allclose(u[:, 1, 3], torch.sigmoid(g_logits[:, 0]))
    assert torch.allclose(u[:, 3, 3:], torch.sigmoid(g_logits[:, :3]))
    # g_k is an nn.Linear(2 + k, 1): its Mul-Adds for k = 1..K-1
    assert sched.gate_muladds() == [3, 4, 5]


def test_feasible_budgets_reject_levels_outside_the_exit_costs():
    costs = torch.tensor([0.306, 0.5, 1.001])                     # T2T-ViT-7 at 28 px: exit 1 costs 0.306
    assert feasible_budgets([0.5, 1.001], costs) == [0.5, 1.001]
    with pytest.raises(ConfigError, match=r"budgets=\[0.3, 0.5\]: each budget must lie in \(0.306, 1.001\]"):
        feasible_budgets([0.3, 0.5], costs)
    with pytest.raises(ConfigError, match="must lie in"):
        feasible_budgets([], costs)


def test_auto_budgets_run_from_the_first_exit_to_the_backbone():
    # c_1 = 0.2, 4 budgets: 0.2 + 0.8 j / 4
    assert auto_budgets(0.2, 4) == [0.4, 0.6, 0.8, 1.0]
    assert feasible_budgets(auto_budgets(0.306, 10), torch.tensor([0.306, 0.5, 1.001]))[0] == pytest.approx(0.3754)


def test_stacked_schedulers_equal_separate_ones():
    torch.manual_seed(0)
    stacked = EENetScheduler(4, hidden=8, models=3)
    torch.manual_seed(0)
    single = EENetScheduler(4, hidden=8)
    feats = torch.rand(5, 4, 3)
    g3, h3 = stacked(feats)
    g1, h1 = single(feats)
    assert g3.shape == (3, 5, 4) and torch.allclose(g3[2], g1) and torch.allclose(h3[0], h1)
    q = torch.randint(0, 2, (5, 4)).float()
    r = torch.full((5, 4), 0.25)
    costs = torch.tensor([0.3, 0.5, 0.8, 1.0])
    losses = eenet_losses(g3, h3, q, r, costs, torch.tensor([0.4, 0.5, 0.6]))
    for m, B in enumerate((0.4, 0.5, 0.6)):
        for stacked_loss, loss in zip(losses, eenet_losses(g1, h1, q, r, costs, B)):
            assert torch.allclose(stacked_loss[m], loss)
