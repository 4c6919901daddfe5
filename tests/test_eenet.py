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


# --------------------------------------------------------------------------------------------
# scorer: official (methods/eenet_official.py): the released code's scheduler, fixed


def test_official_features_are_the_softmax_max_and_entropy():
    from methods.eenet_official import official_features

    probs = torch.tensor([[[0.25, 0.75], [1.0, 0.0]]])                              # N=1, K=2, C=2
    x = official_features(probs)[0]
    ent = 1 + (0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / math.log(2)
    # p_k itself, max p_k, 1 + sum p log p / log C (0 log 0 = 0: no NaN for a one-hot p); no vote
    assert torch.allclose(x, torch.tensor([[0.25, 0.75, 0.75, ent], [1.0, 0.0, 1.0, 1.0]]), atol=1e-6)


def test_official_scheduler_layers_have_the_official_shapes():
    from methods.eenet_official import OfficialScheduler

    torch.manual_seed(0)
    s = OfficialScheduler(3, 2)                                                     # K=3 exits, C=2 classes
    # exit k sees C + 2 features and k-1 earlier scores: d_k = C + 1 + k = 4, 5, 6 inputs
    assert s.in_mask.sum(1).tolist() == [4, 5, 6]
    # h_k: Linear(d_k, int(0.5 d_k)) -> Sigmoid -> Linear(., 1) -> Sigmoid: 2, 2, 3 hidden units
    assert s.hidden_mask.sum(1).tolist() == [2, 2, 3]
    # g_k is bias-free (no bias parameter) over the C probabilities and the other 1 + k inputs
    assert not any("g_bias" in n for n, _ in s.named_parameters())
    assert s.gate_muladds() == [4, 5]
    # initialised as the official nn.Linear's: |w| <= 1/sqrt(C) on p_k, 1/sqrt(1 + k) on the rest
    g = s.g_weight[0]
    assert (g[:, :2].abs() <= 2 ** -0.5).all() and (g[0, 2:4].abs() <= 2 ** -0.5).all()
    assert (g[2, 2:6].abs() <= 4 ** -0.5).all() and torch.count_nonzero(g[0, 4:]) == 0


def test_official_g_by_hand_clamped_in_training_raw_at_test():
    from methods.eenet_official import OfficialScheduler

    s = OfficialScheduler(2, 2)
    with torch.no_grad():
        s.g_weight.zero_()
        s.g_weight[0, 0, :4] = torch.tensor([1.0, 2.0, 0.0, 0.0])                   # g_1 = p_1 + 2 p_2
        s.g_weight[0, 1, :5] = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0])             # g_2 = the score of exit 1
    feats = torch.tensor([[[0.25, 0.75, 0.75, 0.2], [0.5, 0.5, 0.5, 0.0]]])        # N=1, K=2, C+2=4
    g, h = s(feats)
    # g_1 = 0.25 + 1.5 = 1.75; in training exit 2 sees it clamped to 1, at test the raw 1.75
    assert torch.allclose(g[0, 0], torch.tensor([1.75, 1.0]))
    assert torch.allclose(s.test_scores(feats)[0, 0], torch.tensor([1.75, 1.75]))
    # h_k outputs are sigmoids, so r_hat = softmax_k(h) stays near uniform
    assert ((h > 0) & (h < 1)).all()


def test_official_shares_are_confined_near_uniform():
    from methods.eenet_official import OfficialScheduler

    torch.manual_seed(0)
    K = 9
    s = OfficialScheduler(K, 10, models=4)
    with torch.no_grad():                                          # push h_k to its extremes
        s.h_weight2.mul_(1e3)
        s.h_bias2.mul_(1e3)
    _, h = s(torch.rand(64, K, 12))
    r_hat = h.softmax(-1)
    lo, hi = 1 / (1 + (K - 1) * math.e), math.e / (math.e + K - 1)              # 0.044, 0.254
    assert r_hat.min() >= lo - 1e-6 and r_hat.max() <= hi + 1e-6
    assert round(lo, 3) == 0.044 and round(hi, 3) == 0.254


def test_official_losses_by_hand():
    from methods.eenet_official import official_losses

    # N=2, K=2; g raw (clamped to [0, 1] for the loss); h = sigmoid outputs, r_hat = softmax_k(h)
    g = torch.tensor([[[0.5, 1.5], [0.25, -0.5]]])
    h = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0]]])                         # r_hat (0.25, 0.75), (0.5, 0.5)
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    costs, B = torch.tensor([0.4, 1.0]), torch.tensor([0.6])
    l_bce, l_kl, l_cost = official_losses(g, h, q, costs, B)
    # BCE weights r_hat / sum_n r_hat per exit: exit 1 (1/3, 2/3), exit 2 (0.6, 0.4); clamped scores
    # s = (0.5, 1), (0.25, 0); BCE(1, 0) and BCE(0, 1) are -log(0) clamped at 100
    bce = (1 / 3 * -math.log(0.5) + 2 / 3 * -math.log(0.75) + 0.6 * 100 + 0.4 * 100) / 2
    assert math.isclose(l_bce.item(), bce, rel_tol=1e-5)
    # KL target t = s / sum_k s: (1/3, 2/3) and (1, 0); mean over the N K entries of t log(t / r_hat)
    kl = (1 / 3 * math.log((1 / 3) / 0.25) + 2 / 3 * math.log((2 / 3) / 0.75) + 1 * math.log(1 / 0.5)) / 4
    assert math.isclose(l_kl.item(), kl, rel_tol=1e-5)
    assert math.isclose(l_cost.item(), abs((0.25 * 0.4 + 0.75 + 0.5 * 0.4 + 0.5) / 2 - 0.6) / 0.6, rel_tol=1e-6)
    # a sample whose clamped scores are all 0 adds nothing to the KL term (0/0 in the official code)
    _, l_kl0, _ = official_losses(torch.full((1, 1, 2), -1.0), h[:, :1], q[:1], costs, B)
    assert l_kl0.item() == 0.0


def test_official_phases_alternate_every_10_epochs_over_one_permutation():
    from methods.eenet_official import phases

    steps = list(phases(45, 5, 2, torch.Generator().manual_seed(0)))               # 3 mini-batches an epoch
    rows = [r.tolist() for r, _ in steps]
    assert rows[:3] == rows[3:6] == rows[30:33] and sorted(sum(rows[:3], [])) == [0, 1, 2, 3, 4]
    assert [b for _, b in steps] == [True] * 30 + [False] * 15                      # epochs 0-9 BCE, 10-14 not


def test_official_phases_train_what_they_should():
    from methods.eenet_official import OfficialScheduler, official_losses, train_official

    torch.manual_seed(0)
    feats, q = torch.rand(8, 3, 4), torch.randint(0, 2, (8, 3)).float()
    costs, B = torch.tensor([0.3, 0.6, 1.0]), torch.tensor([0.5])
    s = OfficialScheduler(3, 2)
    g_params, h_params = [s.g_weight], [s.h_weight1, s.h_bias1, s.h_weight2, s.h_bias2]
    for bce_phase in (True, False):
        g, h = s(feats)
        l_bce, l_kl, l_cost = official_losses(g, h, q, costs, B)
        loss = (l_bce * bce_phase + (1e-3 * l_kl + 1e-2 * l_cost) * (not bce_phase)).sum()
        grads = torch.autograd.grad(loss, g_params + h_params)
        moved = [bool(torch.count_nonzero(d)) for d in grads]
        # BCE phase: the loss reaches g_k only; KL + cost phase: h_k only
        assert moved == ([True, False, False, False, False] if bce_phase else [False, True, True, True, True])
    # 10 steps of one mini-batch an epoch = the first BCE phase: h_k does not move (no weight decay), g_k does
    params = {"scorer_lr": 1e-2, "scorer_weight_decay": 0.0, "scorer_steps": 10, "scorer_batch_size": 8}
    torch.manual_seed(1)
    start = OfficialScheduler(3, 2)
    torch.manual_seed(1)
    trained = train_official(feats, q, costs, [(0.5, 1e-3, 1e-2)], params, torch.Generator().manual_seed(0),
                             _no_progress)
    assert not torch.equal(trained.g_weight, start.g_weight)
    for name in ("h_weight1", "h_bias1", "h_weight2", "h_bias2"):
        assert torch.equal(getattr(trained, name), getattr(start, name)), name


class _Bar:
    def update(self, n=1):
        pass


class _no_progress:
    def __init__(self, desc, total):
        pass

    def __enter__(self):
        return _Bar()

    def __exit__(self, *exc):
        return False


def test_official_thresholds_and_every_sample_answered():
    from methods.eenet_official import official_exits, official_thresholds

    scores = torch.tensor([[0.9, 0.1, 0.3], [0.8, 0.2, -0.1], [0.7, 0.3, 0.2],
                           [0.6, 0.9, -0.4], [0.5, 0.6, 0.1], [0.4, 0.2, 0.0]])
    r_hat = torch.tensor([[1 / 3, 1 / 2, 1 / 6]]).expand(6, 3)                      # counts 2, 3, rest
    T = official_thresholds(scores, r_hat)
    # exit 1: the 2nd highest (0.8), samples 1, 2 leave; exit 2: the 3rd highest of (0.3, 0.9, 0.6, 0.2)
    assert T.tolist() == [pytest.approx(0.8), pytest.approx(0.3), -np.inf]
    # a sample that passes no threshold exits at K even with a negative last score (the official
    # T_K = 0 drops it: counted wrong and free)
    assert official_exits(np.array([[0.85, 0.0, -3.0], [0.5, 0.35, -1.0], [0.5, 0.1, -5.0]]), T).tolist() == [0, 1, 2]
    # an exit whose count is 0 gets threshold 1 on the raw score: only raw scores >= 1 leave there
    T = official_thresholds(scores, torch.tensor([[0.1, 0.5, 0.4]]).expand(6, 3))
    assert T[0] == 1.0 and official_exits(np.array([[1.2, 0.0, 0.0], [0.99, 0.0, 0.0]]), T)[0] == 0


def test_scorer_official_runs_end_to_end_on_digits(cli, tmp_path):
    from conftest import check_replay, read_record

    status, out, err = cli("run", "--method", "eenet", "--set", "method.scorer=official", "--set",
                           "method.num_budgets=3", "--set", "method.scorer_steps=300", "--out", tmp_path)
    assert status == 0, err
    record = read_record(tmp_path)
    assert record["config"]["method_params"]["scorer"] == "official"
    points = record["operating_points"]
    assert len(points) == 3
    samples = np.load(next(tmp_path.glob("*/samples.npz")))
    assert samples["exit_index"].shape == (3, 359) and samples["exit_index"].max() <= 5
    for p in points:
        assert abs(sum(p["exit_shares"]) - 1) < 1e-9                          # every test sample answered
        assert 0.0 < p["cost"] < 1.01 and p["accuracy"] > 0.7
    check_replay(tmp_path)
