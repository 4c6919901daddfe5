"""Differentiable branching's equations (methods.md §5) against hand-computed values."""
import math

import torch

from methods.diffbranch import branching_loss, exit_decision, mixture_weights, soft_cost, soft_output

LAM = torch.tensor([[0.5, 0.2]])                                   # K = 3 exits, two gates
Z = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [1.0, 3.0]]])          # [B=1, K=3, C=2]
COSTS = torch.tensor([0.3, 0.6, 1.05])


def test_mixture_weights_product_form():
    # lam_1 = 0.5; (1 - 0.5) * 0.2 = 0.1; (1 - 0.5)(1 - 0.2) = 0.4
    w = mixture_weights(LAM)
    assert torch.allclose(w, torch.tensor([[0.5, 0.1, 0.4]]))
    assert torch.allclose(mixture_weights(torch.rand(16, 5)).sum(1), torch.ones(16))


def test_soft_output_is_the_backward_recursion():
    # 0.5 (2, 0) + 0.1 (0, 1) + 0.4 (1, 3) = (1.4, 1.3)
    y = soft_output(Z, LAM)
    assert torch.allclose(y, torch.tensor([[1.4, 1.3]]))
    # y <- lam_b z_b + (1 - lam_b) y from b = K-1 down to 1, starting at z_K
    rec = Z[:, 2]
    for b in (1, 0):
        rec = LAM[:, b:b + 1] * Z[:, b] + (1 - LAM[:, b:b + 1]) * rec
    assert torch.allclose(y, rec)


def test_soft_cost():
    # 0.5 * 0.3 + 0.1 * 0.6 + 0.4 * 1.05 = 0.63
    assert torch.allclose(soft_cost(COSTS, LAM), torch.tensor([0.63]))


def test_branching_loss():
    ce = -math.log(math.exp(1.4) / (math.exp(1.4) + math.exp(1.3)))          # CE((1.4, 1.3), 0)
    loss = branching_loss(Z, LAM, torch.tensor([0]), COSTS, beta=2.0)
    assert math.isclose(loss.item(), ce + 2.0 * 0.63, rel_tol=1e-6)


def test_exit_decision_first_gate_at_half_else_last():
    lam = torch.tensor([[0.4, 0.6], [0.5, 0.1], [0.1, 0.2], [0.49, 0.5]])
    assert exit_decision(lam).tolist() == [1, 0, 2, 1]

