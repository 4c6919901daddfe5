"""Shared training machinery for methods: SGD with a cosine schedule over mini-batches of cached
features, IM forward passes, and the NaN guard. One implementation, used by every method."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from eebench.errors import NonFiniteLossError
from eebench.features import SplitFeatures

#: The optimiser settings every method starts from (JEI-DNN's, ``methods.md`` §6).
SGD_DEFAULTS: dict[str, Any] = {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "lr_min": 2e-4,
                                "batch_size": 64, "epochs": 15}


@dataclass
class SGDSchedule:
    """SGD with momentum and weight decay, cosine-annealed per step from ``lr`` to ``lr_min``."""

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_min: float = 2e-4
    batch_size: int = 64
    epochs: int = 15

    @classmethod
    def from_params(cls, params: dict[str, Any], **overrides: Any) -> "SGDSchedule":
        keys = cls.__dataclass_fields__
        return cls(**{**{k: params[k] for k in keys if k in params}, **overrides})

    def steps_per_epoch(self, n: int) -> int:
        return math.ceil(n / self.batch_size)

    def build(self, parameters: Any, total_steps: int) -> tuple[torch.optim.Optimizer, Any]:
        """``(optimizer, scheduler)``; call ``scheduler.step()`` after each optimiser step."""
        opt = torch.optim.SGD(parameters, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_steps), eta_min=self.lr_min)
        return opt, sched


def minibatches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Shuffled index batches ``[≤batch_size]`` covering ``range(n)`` once."""
    perm = torch.randperm(n, generator=generator)
    yield from perm.split(batch_size)


def check_finite(loss: torch.Tensor, where: str) -> None:
    """Raise :class:`NonFiniteLossError` if ``loss`` is NaN or infinite.

    Args:
        where: e.g. "jei (lambda=0.5), epoch 3"; named in the message.
    """
    if not torch.isfinite(loss).all():
        raise NonFiniteLossError(
            f"{where}: the training loss is {loss.item():g}; lower the learning rate "
            f"(--set method.lr=...) or check the features; no record was written")


def im_logits(ims: Sequence[nn.Module], split: SplitFeatures, idx: torch.Tensor | slice = slice(None)
              ) -> list[torch.Tensor]:
    """Logits of the K−1 IMs on rows ``idx`` of ``split``: a list of K−1 tensors ``[B, C]``."""
    return [im(x[idx]) for im, x in zip(ims, split.im_inputs)]


def all_exit_logits(ims: Sequence[nn.Module], split: SplitFeatures, idx: torch.Tensor | slice = slice(None)
                    ) -> torch.Tensor:
    """Logits of every exit, the frozen final classifier last: ``[B, K, C]``."""
    return torch.stack([*im_logits(ims, split, idx), split.logits[idx]], dim=1)


@torch.no_grad()
def exit_probs(ims: Sequence[nn.Module], split: SplitFeatures, chunk: int = 4096) -> torch.Tensor:
    """Softmax of every exit's logits on a whole split, ``[N, K, C]`` (IMs in eval mode)."""
    was = [m.training for m in ims]
    for m in ims:
        m.eval()
    out = torch.cat([all_exit_logits(ims, split, slice(i, i + chunk)).softmax(-1)
                     for i in range(0, split.n, chunk)])
    for m, w in zip(ims, was):
        m.train(w)
    return out


def per_exit_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy ℓ_k of every exit, ``[B, K, C]`` logits → ``[B, K]``."""
    B, K, C = logits.shape
    return F.cross_entropy(logits.reshape(B * K, C), labels.repeat_interleave(K), reduction="none").view(B, K)


def train_ims(ims: nn.ModuleList, train: SplitFeatures, weights: torch.Tensor | None, schedule: SGDSchedule,
              generator: torch.Generator, where: str, progress: Any = None,
              batch_loss: Callable[[list[torch.Tensor], torch.Tensor], torch.Tensor] | None = None) -> None:
    """Train IMs with the weighted sum of per-exit cross-entropies Σ_k w_k ℓ_k (``methods.md`` §1),
    or with ``batch_loss``.

    Args:
        ims: K−1 IMs (exit K is the frozen classifier, not trained).
        weights: ``[K−1]`` loss weights of the IMs (ones: plain sum; scaled K+1−k: JEI-DNN's warm-up).
        schedule: optimiser settings; runs ``schedule.epochs`` epochs.
        batch_loss: instead of the weighted sum, ``(K−1 IM logits [B, C], labels [B]) → scalar loss``
            (BoostedNet's loss).

    Raises:
        NonFiniteLossError: the loss became NaN or infinite.
    """
    if batch_loss is None:
        def batch_loss(logits: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
            return (weights * torch.stack([F.cross_entropy(z, y) for z in logits])).sum()

    opt, sched = schedule.build(ims.parameters(), schedule.epochs * schedule.steps_per_epoch(train.n))
    ims.train()
    for epoch in range(schedule.epochs):
        for idx in minibatches(train.n, schedule.batch_size, generator):
            loss = batch_loss(im_logits(ims, train, idx), train.labels[idx])
            check_finite(loss, f"{where}, epoch {epoch + 1}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if progress is not None:
            progress.update(1)
