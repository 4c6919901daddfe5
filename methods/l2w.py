"""L2W-DEN: learning to weight samples for dynamic early-exiting networks (``methods.md`` §3).

Yizeng Han et al., "Learning to Weight Samples for Dynamic Early-exiting Networks", ECCV 2022
(LeapLabTHU/L2W-DEN: ``tools/main_cifar_DDP.py``, ``models/weight_predict.py``, ``tools/meta.py``).

A weight prediction network (WPN, K → 500 → K, ReLU then tanh) reads the detached per-exit
losses (ℓ_1..ℓ_K) of a sample and gives its loss weights w = 1 + ε·(w̃ − mean_k w̃). The IMs are
trained with Σ_k mean_n(w_{n,k}·ℓ_{n,k}), w taken without gradient. Every ``meta_interval``
mini-batches, the batch is split into halves A and B and the WPN is meta-trained:

1. one differentiable SGD step of the trainable IM parameters on A with WPN weights that keep
   their gradient (``torch.func.functional_call`` and ``torch.autograd.grad(create_graph=True)``;
   the step is the IM optimiser's own: momentum buffer, weight decay and current learning rate,
   as the original's ``MetaSGD``; the meta-gradient flows through the IM gradient, θ and the
   momentum buffer being constants with respect to the WPN);
2. on B, through the updated IMs, simulated budgeted exiting with target shares π_k ∝ q^k: in
   exit order the ⌊n·π_k⌋ most confident not-yet-assigned samples exit, the last exit takes the
   rest (the MSDNet threshold search of :mod:`eebench.harness.exit_policy` applied to B itself); the meta
   loss is Σ_k of the mean CE over the samples assigned to exit k;
3. an Adam step of the WPN (lr 1e-4, weight decay 1e-4, cosine-annealed to 0 as in the original);

then the IMs take their real SGD step on A with the updated WPN's weights; then A and B swap roles
(two IM steps per mini-batch, as in the original). Only parameters with ``requires_grad`` are
stepped, the fault of the original's meta optimiser (which zips every parameter with the gradient
list) is not repeated.

Exit K is the backbone's frozen classifier. The WPN still sees and weighs all K exits (K inputs,
K outputs, as in the paper): ℓ_K is a constant input, and w_K, though it multiplies a loss with no
gradient, enters the per-sample mean that centres the other K−1 weights. In the meta loss exit K
takes the samples not assigned earlier; its CE is a constant, so the WPN learns only through the
IMs' terms and through which samples the updated IMs keep.

The IMs train from scratch for the shared IM stage's number of epochs
(:attr:`eebench.harness.method.ExitTask.im_schedule`) and with its learning rate, at the official CIFAR
recipe's batch of 1024 (``docs/decisions.md``: the measurement behind both), and are kept at the
epoch of the lowest summed IM error on val.

Test: the MSDNet threshold search on the max softmax on the policy split
(:class:`eebench.harness.exit_policy.ThresholdPolicy`), one operating point per budget level q of
``q_grid``; the gates cost nothing.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from eebench.method import (AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, Q_GRID, BestState, Each, ExitMethod, ExitTask,
                            IMStack, Range, SplitFeatures, ThresholdPolicy, apply_thresholds, check_finite,
                            im_val_error, ims_policy, minibatches, msdnet_thresholds, per_exit_ce, register_method,
                            unpack)


class WeightPredictionNet(nn.Module):
    """The WPN: ``[B, K]`` per-exit losses → ``[B, K]`` raw weights w̃ ∈ (−1, 1).

    MLP K → hidden → K with ReLU, then tanh (``MLP_tanh`` of ``models/weight_predict.py``).
    """

    def __init__(self, num_exits: int, hidden: int = 500):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(num_exits, hidden), nn.ReLU(), nn.Linear(hidden, num_exits), nn.Tanh())

    def forward(self, losses: torch.Tensor) -> torch.Tensor:
        return self.net(losses)


def normalise_weights(raw: torch.Tensor, epsilon: float) -> torch.Tensor:
    """w = 1 + ε·(w̃ − mean_k w̃), the mean over the exits of each sample (L2W-DEN eq. 6,
    ``constraint_dimension: col``). ``[B, K]`` → ``[B, K]``; each row of w averages to 1."""
    return 1.0 + epsilon * (raw - raw.mean(-1, keepdim=True))


def sgd_lookahead(params: dict[str, torch.Tensor], grads: Sequence[torch.Tensor], optimizer: torch.optim.SGD,
                  originals: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    """One differentiable SGD step θ' = θ − lr·(m·buf + g + wd·θ), the update ``torch.optim.SGD.step``
    would make (``tools/meta.py``, ``MetaSGD``).

    lr, momentum m and weight decay wd are read from the optimiser's (single) parameter group, the
    momentum buffer buf from its state (absent before the first step: θ' = θ − lr·(g + wd·θ)).
    θ and buf enter as constants, θ' = [θ(1 − lr·wd) − lr·m·buf] − lr·g: the meta-gradient flows
    through g alone, to whatever the loss depended on (the WPN), which keeps the graph small.

    Args:
        params: name → θ.
        grads: dL/dθ in the order of ``params``, from ``autograd.grad(..., create_graph=True)``.
        optimizer: the IMs' SGD optimiser (not modified).
        originals: name → the optimiser's parameter, for its momentum buffer.

    Returns:
        name → θ' (same keys as ``params``).

    Raises:
        ValueError: more than one parameter group, Nesterov momentum or dampening (not used here).
    """
    if len(optimizer.param_groups) != 1:
        raise ValueError("sgd_lookahead expects an optimiser with one parameter group")
    group = optimizer.param_groups[0]
    if group.get("nesterov") or group.get("dampening"):
        raise ValueError("sgd_lookahead supports plain momentum SGD (no Nesterov, no dampening)")
    lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
    out = {}
    for (name, theta), g in zip(params.items(), grads):
        with torch.no_grad():
            base = theta * (1.0 - lr * wd)
            buf = optimizer.state.get(originals[name], {}).get("momentum_buffer") if momentum else None
            if buf is not None:
                base = base - lr * momentum * buf
        out[name] = base - lr * g
    return out


def budgeted_exit_assignment(confidence: torch.Tensor, q: float) -> torch.Tensor:
    """L2W-DEN's simulated budgeted exiting on a batch: in exit order, the ⌊n·π_k⌋ most confident
    samples not yet assigned exit at k (π_k ∝ q^k); the last exit takes the rest.

    This is the MSDNet threshold search run on the batch itself (:func:`msdnet_thresholds`, then
    :func:`apply_thresholds`), so it is written once.

    Args:
        confidence: ``[n, K]`` max softmax of every exit.
        q: budget level.

    Returns:
        ``[n]`` int64, the 0-based exit of every sample.
    """
    conf = confidence.detach().cpu().numpy().astype(np.float64)
    return torch.as_tensor(apply_thresholds(conf, msdnet_thresholds(conf, q)), dtype=torch.long)


def budgeted_meta_loss(logits: torch.Tensor, labels: torch.Tensor, q: float) -> torch.Tensor:
    """Σ_k mean CE over the samples assigned to exit k by :func:`budgeted_exit_assignment`
    (exits with no sample add nothing). ``logits``: ``[n, K, C]`` → scalar."""
    with torch.no_grad():
        exits = budgeted_exit_assignment(logits.softmax(-1).amax(-1), q)
    loss = logits.new_zeros(())
    for k in exits.unique().tolist():
        sel = exits == k
        loss = loss + F.cross_entropy(logits[sel, k], labels[sel])
    return loss


def weighted_im_loss(losses: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_k mean_n(w_{n,k}·ℓ_{n,k}); ``[B, K]`` each → scalar."""
    return (weights * losses).mean(0).sum()


class L2WTrainer:
    """The L2W-DEN training loop on cached features (see the module docstring).

    Args:
        ims: K−1 IMs (trained in place).
        wpn: the weight prediction network.
        epsilon, q: ε and the budget level of the meta objective.
        im_opt: SGD over the IMs' trainable parameters; wpn_opt: Adam over the WPN.
    """

    def __init__(self, ims: nn.ModuleList, wpn: WeightPredictionNet, epsilon: float, q: float,
                 im_opt: torch.optim.SGD, wpn_opt: torch.optim.Optimizer):
        self.stack, self.wpn, self.epsilon, self.q = IMStack(ims), wpn, epsilon, q
        self.im_opt, self.wpn_opt = im_opt, wpn_opt

    def _logits(self, inputs: Sequence[torch.Tensor], final: torch.Tensor,
                params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """``[B, K, C]``: the IMs (with ``params`` if given) and the frozen classifier's logits."""
        z = self.stack(inputs) if params is None else functional_call(self.stack, params, (inputs,))
        return torch.cat([z, final[:, None]], dim=1)

    def meta_step(self, train: tuple, meta: tuple) -> torch.Tensor:
        """One WPN update: lookahead step on ``train``, budgeted meta loss on ``meta``.

        Args:
            train, meta: ``(inputs, final_logits, labels)`` of the halves A and B; inputs are K−1
                tensors ``[b, D_k]``, final_logits ``[b, C]``, labels ``[b]``.

        Returns:
            the meta loss (detached scalar).

        Raises:
            NonFiniteLossError: the meta loss is NaN or infinite.
        """
        originals = {n: p for n, p in self.stack.named_parameters() if p.requires_grad}
        params = {n: p.detach().requires_grad_(True) for n, p in originals.items()}
        x_a, final_a, y_a = train
        losses = per_exit_ce(self._logits(x_a, final_a, params), y_a)                    # [b, K]
        weights = normalise_weights(self.wpn(losses.detach()), self.epsilon)            # keeps grad to WPN
        grads = torch.autograd.grad(weighted_im_loss(losses, weights), list(params.values()), create_graph=True)
        updated = sgd_lookahead(params, grads, self.im_opt, originals)
        x_b, final_b, y_b = meta
        meta_loss = budgeted_meta_loss(self._logits(x_b, final_b, updated), y_b, self.q)
        check_finite(meta_loss, "l2w: meta loss")
        wpn_params = [p for p in self.wpn.parameters() if p.requires_grad]
        self.wpn_opt.zero_grad(set_to_none=True)
        if meta_loss.requires_grad:  # every sample at the frozen exit K leaves nothing to learn from
            for p, g in zip(wpn_params, torch.autograd.grad(meta_loss, wpn_params, allow_unused=True)):
                p.grad = g
            self.wpn_opt.step()
        return meta_loss.detach()

    def im_step(self, train: tuple) -> torch.Tensor:
        """The IMs' real SGD step on ``train`` with WPN weights taken without gradient. Returns the loss."""
        x, final, y = train
        losses = per_exit_ce(self._logits(x, final), y)
        with torch.no_grad():
            weights = normalise_weights(self.wpn(losses.detach()), self.epsilon)
        loss = weighted_im_loss(losses, weights)
        check_finite(loss, "l2w: IM loss")
        self.im_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.im_opt.step()
        return loss.detach()


def _half(split: SplitFeatures, idx: torch.Tensor) -> tuple:
    return split.rows(idx), split.logits[idx], split.labels[idx]


@register_method
class L2W(ExitMethod):
    name = "l2w"
    aliases = ("l2w-den", "l2wden")
    paper = "Han et al., ECCV 2022 (L2W-DEN)"
    parameters: dict[str, Any] = {
        "batch_size": 1024,        # the official CIFAR recipe's (halves of 512 for the meta step)
        "epsilon": 0.8,            # ε of the weight normalisation
        "q": 0.75,                 # budget level of the meta objective, π_k ∝ q^k
        "meta_lr": 1e-4,           # Adam of the WPN
        "meta_weight_decay": 1e-4,
        "wpn_hidden": 500,
        "meta_interval": 1,        # mini-batches between WPN updates
        "q_grid": Q_GRID,          # test-time budget levels of the threshold search
    }
    constraints = {"batch_size": Range(2), "epsilon": NON_NEGATIVE, "q": POSITIVE, "meta_lr": POSITIVE,
                   "meta_weight_decay": NON_NEGATIVE, "wpn_hidden": AT_LEAST_ONE, "meta_interval": AT_LEAST_ONE,
                   "q_grid": Each(POSITIVE)}
    grid = {"epsilon": [0.4, 0.8, 1.2], "q": [0.5, 0.75, 1.0], "meta_lr": [1e-4, 1e-3]}
    test_parameters = {"batch_size": 128}

    def fit(self, task: ExitTask, params: dict[str, Any], seed: int) -> ThresholdPolicy:
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        train, K = task.train, task.num_exits
        ims = task.make_ims()
        wpn = WeightPredictionNet(K, int(params["wpn_hidden"]))
        schedule = dataclasses.replace(task.im_schedule, batch_size=int(params["batch_size"]))
        n_batches = schedule.epochs * schedule.steps_per_epoch(train.n)
        interval = max(1, int(params["meta_interval"]))
        im_opt, im_sched = schedule.build([p for p in ims.parameters() if p.requires_grad], 2 * n_batches)
        wpn_opt = torch.optim.Adam(wpn.parameters(), lr=params["meta_lr"], weight_decay=params["meta_weight_decay"])
        meta_updates = 2 * len(range(0, n_batches, interval))
        wpn_sched = torch.optim.lr_scheduler.CosineAnnealingLR(wpn_opt, T_max=max(1, meta_updates), eta_min=0.0)
        trainer = L2WTrainer(ims, wpn, float(params["epsilon"]), float(params["q"]), im_opt, wpn_opt)
        best = BestState([ims])
        ims.train()
        step = 0
        with task.progress("l2w", schedule.epochs) as bar:
            for epoch in range(1, schedule.epochs + 1):
                for idx in minibatches(train.n, schedule.batch_size, gen):
                    if len(idx) < 2:
                        continue
                    a, b = (_half(train, h) for h in idx.chunk(2))
                    for first, second in ((a, b), (b, a)):
                        if step % interval == 0:
                            trainer.meta_step(first, second)
                            wpn_sched.step()
                        trainer.im_step(first)
                        im_sched.step()
                    step += 1
                best.update([im_val_error(ims, task.val).sum()], epoch)
                bar.update(1)
        best.restore()
        return ims_policy(ims, task.policy, params["q_grid"])

    def restore(self, tensors: dict[str, torch.Tensor], settings: dict[str, Any],
                make_ims: Callable[[], nn.ModuleList]) -> ThresholdPolicy:
        return ims_policy(unpack(tensors, "ims", make_ims()), None, settings["q_grid"], tensors["thresholds"])
