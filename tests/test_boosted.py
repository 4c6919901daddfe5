"""BoostedNet's equations (methods.md §2) against hand-computed values."""
import math

import pytest
import torch
from torch import nn

from eebench.errors import ConfigError
from methods.boosted import boosted_losses, ensemble_logits

Z = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [3.0, -1.0]]])   # [B=1, K=3, C=2]


def test_ensemble_is_the_discounted_sum_of_earlier_logits():
    # E_1 = z_1 = (1, 0); E_2 = (0, 2) + 0.5 (1, 0) = (0.5, 2); E_3 = (3, -1) + 0.5 (0.5, 2) = (3.25, 0)
    E = ensemble_logits(Z, 0.5)
    assert torch.allclose(E, torch.tensor([[[1.0, 0.0], [0.5, 2.0], [3.25, 0.0]]]))
    # gamma = 1: plain cumulative sum
    assert torch.allclose(ensemble_logits(Z, 1.0), Z.cumsum(1))


def test_ensemble_final_exit_backbone_answers_with_the_frozen_head_alone():
    E = ensemble_logits(Z, 0.5, final_exit="backbone")
    assert torch.allclose(E[0, 2], Z[0, 2])
    assert torch.allclose(E[0, :2], ensemble_logits(Z, 0.5)[0, :2])
    with pytest.raises(ConfigError, match="final_exit"):
        ensemble_logits(Z, 0.5, final_exit="last")


def test_boosted_losses_values():
    z1, z2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    losses = boosted_losses([z1, z2], torch.tensor([0]), 0.5)
    # CE((1, 0), 0) = log(1 + e^-1); CE((0, 2) + 0.5 (1, 0), 0) = CE((0.5, 2), 0) = log(1 + e^1.5)
    assert torch.allclose(losses, torch.tensor([math.log(1 + math.exp(-1)), math.log(1 + math.exp(1.5))]), atol=1e-6)


def test_stop_gradient_no_gradient_reaches_earlier_heads():
    torch.manual_seed(0)
    heads = nn.ModuleList(nn.Linear(4, 3) for _ in range(3))
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    losses = boosted_losses([h(x) for h in heads], y, 0.5)
    # head k's loss (k = 3) sends nothing to heads 1 and 2 ...
    grads = torch.autograd.grad(losses[2], [*heads[0].parameters(), *heads[1].parameters(), *heads[2].parameters()],
                                allow_unused=True, retain_graph=True)
    for g in grads[:4]:
        assert g is None or torch.count_nonzero(g) == 0
    # ... but trains head 3 itself
    assert all(g is not None and torch.count_nonzero(g) > 0 for g in grads[4:])
    # without the stop-gradient, the same loss would reach head 1: the test above can fail
    z = [h(x) for h in heads]
    e2 = z[1] + 0.5 * z[0]
    plain = nn.functional.cross_entropy(z[2] + 0.5 * e2, y)
    assert torch.count_nonzero(torch.autograd.grad(plain, heads[0].weight)[0]) > 0
