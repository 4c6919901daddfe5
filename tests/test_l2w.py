"""L2W-DEN's equations (methods.md §3) against hand-computed values."""
import copy

import pytest
import torch
from torch import nn

from eebench.backbones.base import MLPExit
from methods.l2w import (IMStack, L2WTrainer, WeightPredictionNet, budgeted_exit_assignment, budgeted_meta_loss,
                         normalise_weights, per_exit_ce, sgd_lookahead, weighted_im_loss)


def test_weight_normalisation():
    raw = torch.tensor([[0.2, -0.4, 0.5], [0.0, 0.0, 0.0]])
    # mean 0.1: 1 + 0.8 * (0.1, -0.5, 0.4)
    w = normalise_weights(raw, 0.8)
    assert torch.allclose(w, torch.tensor([[1.08, 0.6, 1.32], [1.0, 1.0, 1.0]]))
    assert torch.allclose(normalise_weights(torch.rand(7, 5) * 2 - 1, 0.8).mean(1), torch.ones(7))


def test_wpn_shape_and_range():
    wpn = WeightPredictionNet(5)
    layers = list(wpn.net)
    assert [type(m) for m in layers] == [nn.Linear, nn.ReLU, nn.Linear, nn.Tanh]
    assert (layers[0].in_features, layers[0].out_features, layers[2].out_features) == (5, 500, 5)
    out = wpn(torch.rand(4, 5) * 10)
    assert out.shape == (4, 5) and out.abs().max() < 1


def test_lookahead_hand_computed():
    # theta = 1, g = 0.5, wd = 0.1, momentum 0.9 with buffer 0.2, lr 0.1:
    # d = 0.5 + 0.1 * 1 = 0.6; step = 0.9 * 0.2 + 0.6 = 0.78; theta' = 1 - 0.078 = 0.922
    p = nn.Parameter(torch.tensor([1.0]))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.1)
    opt.state[p]["momentum_buffer"] = torch.tensor([0.2])
    out = sgd_lookahead({"p": p}, [torch.tensor([0.5])], opt, {"p": p})
    assert torch.allclose(out["p"], torch.tensor([0.922]))
    # no buffer yet (first step): theta' = 1 - 0.1 * 0.6
    opt.state.clear()
    assert torch.allclose(sgd_lookahead({"p": p}, [torch.tensor([0.5])], opt, {"p": p})["p"], torch.tensor([0.94]))


def _ims_and_batch(seed=0, K=4, D=6, C=3, B=16):
    torch.manual_seed(seed)
    ims = nn.ModuleList(MLPExit(D, 8, C) for _ in range(K - 1))
    batch = ([torch.randn(B, D) for _ in range(K - 1)], torch.randn(B, C), torch.randint(0, C, (B,)))
    return ims, batch


@pytest.mark.parametrize("warm", [False, True])
def test_functional_step_equals_an_sgd_step(warm):
    ims, (x, final, y) = _ims_and_batch()
    stack = IMStack(ims)
    opt = torch.optim.SGD(ims.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    if warm:  # a real step first, so that momentum buffers exist
        per_exit_ce(torch.cat([stack(x), final[:, None]], 1), y).mean().backward()
        opt.step()
        opt.zero_grad()
    weights = torch.rand(16, 4) + 0.5
    originals = dict(stack.named_parameters())
    params = {n: p.detach().requires_grad_(True) for n, p in originals.items()}
    losses = per_exit_ce(torch.cat([torch.func.functional_call(stack, params, (x,)), final[:, None]], 1), y)
    grads = torch.autograd.grad(weighted_im_loss(losses, weights), list(params.values()), create_graph=True)
    lookahead = sgd_lookahead(params, grads, opt, originals)
    # the same loss through the optimiser itself
    losses = per_exit_ce(torch.cat([stack(x), final[:, None]], 1), y)
    weighted_im_loss(losses, weights).backward()
    opt.step()
    for name, p in stack.named_parameters():
        assert torch.allclose(lookahead[name], p, atol=1e-6), name


def _trainer(ims, epsilon=0.8, q=0.75):
    wpn = WeightPredictionNet(len(ims) + 1, 32)
    im_opt = torch.optim.SGD([p for p in ims.parameters() if p.requires_grad], lr=0.1, momentum=0.9, weight_decay=5e-4)
    wpn_opt = torch.optim.Adam(wpn.parameters(), lr=1e-3, weight_decay=1e-4)
    return L2WTrainer(ims, wpn, epsilon, q, im_opt, wpn_opt), wpn


def test_meta_step_trains_the_wpn_and_leaves_the_ims_alone():
    ims, a = _ims_and_batch(seed=1)
    _, b = _ims_and_batch(seed=2)
    ims[1][0].bias.requires_grad_(False)          # a frozen parameter: only trainable ones are stepped
    trainer, wpn = _trainer(ims)
    before_ims, before_wpn = copy.deepcopy(ims.state_dict()), copy.deepcopy(wpn.state_dict())
    meta_loss = trainer.meta_step(a, b)
    assert torch.isfinite(meta_loss)
    grads = [p.grad for p in wpn.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    assert any(not torch.equal(before_wpn[k], v) for k, v in wpn.state_dict().items())
    for k, v in ims.state_dict().items():
        assert torch.equal(before_ims[k], v), k
    assert all(p.grad is None for p in ims.parameters())
    # the real step then moves the trainable IM parameters, never the frozen one
    trainer.im_step(a)
    assert torch.equal(ims[1][0].bias, before_ims["1.0.bias"])
    assert not torch.equal(ims[0][0].weight, before_ims["0.0.weight"])


def test_budgeted_exit_assignment():
    # q = 1: shares 1/3 each, n = 8 -> floor(8/3) = 2 most confident at exit 1, 2 more at exit 2, 4 at exit 3
    conf = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.9, 0.0], [0.8, 0.5, 0.0], [0.1, 0.8, 0.0],
                         [0.3, 0.7, 0.0], [0.7, 0.2, 0.0], [0.6, 0.6, 0.0], [0.5, 0.4, 0.0]])
    assert budgeted_exit_assignment(conf, 1.0).tolist() == [0, 1, 0, 1, 2, 2, 2, 2]


def test_budgeted_meta_loss():
    torch.manual_seed(0)
    logits = torch.randn(8, 3, 4)
    y = torch.randint(0, 4, (8,))
    exits = budgeted_exit_assignment(logits.softmax(-1).amax(-1), 1.0)
    ce = nn.functional.cross_entropy
    expected = sum(ce(logits[exits == k, k], y[exits == k]) for k in range(3))
    assert torch.allclose(budgeted_meta_loss(logits, y, 1.0), expected)
