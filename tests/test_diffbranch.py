"""Differentiable branching's equations (methods.md §5) against hand-computed values."""
import math

import torch

from methods.diffbranch import (GatedIM, beta_grid, break_even_prices, refine_betas, branching_loss, exit_decision, mixture_weights, soft_cost,
                                soft_output)

LAM = torch.tensor([[0.5, 0.2]])                                   # K = 3 exits, two gates
P = torch.tensor([[[0.8, 0.2], [0.3, 0.7], [0.1, 0.9]]])          # [B=1, K=3, C=2] probabilities
COSTS = torch.tensor([0.3, 0.6, 1.05])


def test_mixture_weights_product_form():
    # lam_1 = 0.5; (1 - 0.5) * 0.2 = 0.1; (1 - 0.5)(1 - 0.2) = 0.4
    w = mixture_weights(LAM)
    assert torch.allclose(w, torch.tensor([[0.5, 0.1, 0.4]]))
    assert torch.allclose(mixture_weights(torch.rand(16, 5)).sum(1), torch.ones(16))
    assert torch.allclose(mixture_weights(torch.rand(3, 16, 5)).sum(-1), torch.ones(3, 16))


def test_soft_output_mixes_probabilities_by_the_backward_recursion():
    # 0.5 (0.8, 0.2) + 0.1 (0.3, 0.7) + 0.4 (0.1, 0.9) = (0.47, 0.53)
    y = soft_output(P, LAM)
    assert torch.allclose(y, torch.tensor([[0.47, 0.53]]))
    # f_b <- lam_b p_b + (1 - lam_b) f_{b+1} from b = K-1 down to 1, starting at p_K
    rec = P[:, 2]
    for b in (1, 0):
        rec = LAM[:, b:b + 1] * P[:, b] + (1 - LAM[:, b:b + 1]) * rec
    assert torch.allclose(y, rec)


def test_soft_cost():
    # 0.5 * 0.3 + 0.1 * 0.6 + 0.4 * 1.05 = 0.63
    assert torch.allclose(soft_cost(COSTS, LAM), torch.tensor([0.63]))


def test_branching_loss_is_the_cross_entropy_of_the_mixture_plus_the_priced_cost():
    loss = branching_loss(P.log(), LAM, torch.tensor([0]), COSTS, beta=2.0)
    assert math.isclose(loss.item(), -math.log(0.47) + 2.0 * 0.63, rel_tol=1e-6)
    # one loss per model, beta per model
    two = branching_loss(P.log().expand(2, -1, -1, -1), LAM.expand(2, -1, -1), torch.tensor([1]), COSTS,
                         beta=torch.tensor([0.0, 1.0]))
    assert torch.allclose(two, torch.tensor([-math.log(0.53), -math.log(0.53) + 0.63]))


def test_exit_decision_first_gate_at_half_else_last():
    lam = torch.tensor([[0.4, 0.6], [0.5, 0.1], [0.1, 0.2], [0.49, 0.5]])
    assert exit_decision(lam).tolist() == [1, 0, 2, 1]


def test_gate_unit_starts_at_continue_and_keeps_the_im():
    from torch import nn

    from eebench.backbones.base import MLPExit

    for im in (nn.Linear(5, 3), MLPExit(5, 8, 3)):
        gated = GatedIM(im, 0.02)
        x = torch.randn(6, 5)
        out = gated(x)
        assert out.shape == (6, 4)
        assert torch.allclose(out[:, :3], im(x))                               # the C logits are the IM's
        assert torch.allclose(torch.sigmoid(out[:, 3]), torch.full((6,), 0.02))  # lambda = 0.02 for every input


def test_beta_grid_spans_the_quantiles_of_the_break_even_prices():
    # prices (l_1 - l_K) / (c_K - c_1) with c_K - c_1 = 0.5: (1.0 - 0.5) / 0.5 = 1, 2, 4, -2 (dropped), 8
    losses = torch.tensor([[1.0, 0.5], [1.5, 0.5], [2.5, 0.5], [0.0, 1.0], [4.5, 0.5]])
    prices = break_even_prices(losses, [0.5, 1.0])
    assert prices.tolist() == [1.0, 2.0, 4.0, -2.0, 8.0]
    # positive prices 1, 2, 4, 8: quantiles 0 and 1 are 1 and 8; 4 values log-spaced: 1, 2, 4, 8
    assert beta_grid(prices, 4, levels=(0.0, 1.0)) == [1.0, 2.0, 4.0, 8.0]


def test_refined_betas_fill_the_widest_val_cost_gaps():
    # gaps 0.1 on [1, 4] and 0.6 on [4, 16]: three extra values all go to [4, 16] (0.6 / 4 = 0.15 > 0.1),
    # splitting it evenly in log beta: 4 * 4^(1/4), 4 * 4^(2/4), 4 * 4^(3/4)
    assert refine_betas([16.0, 1.0, 4.0], [0.2, 0.9, 0.8], 3) == [5.657, 8.0, 11.31]
    # gaps 0.13 and 0.6, six extra: [4, 16] takes four (0.6 / 5 = 0.12 < 0.13), then [1, 4] one, then
    # [4, 16] the last (0.6 / 5 = 0.12 > 0.13 / 2): [1, 4] in 2 pieces, [4, 16] in 6
    assert refine_betas([1.0, 4.0, 16.0], [0.9, 0.77, 0.17], 6) == [2.0, 5.04, 6.35, 8.0, 10.08, 12.7]
