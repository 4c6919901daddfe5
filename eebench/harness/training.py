"""Shared training machinery for methods: SGD with a cosine schedule over mini-batches of cached
features, IM forward passes, per-IM selection on val, progress reporting and the NaN guard. One
implementation, used by every method."""
from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from eebench.errors import NonFiniteLossError
from eebench.harness.features import SplitFeatures
from eebench.params import AT_LEAST_ONE, MOMENTUM, NON_NEGATIVE, POSITIVE, Constraint

#: The optimiser settings of JEI-DNN (``methods.md`` §6), from which the joint phases of JEI-DNN
#: and differentiable branching start.
SGD_DEFAULTS: dict[str, Any] = {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "lr_min": 2e-4,
                                "batch_size": 64, "epochs": 15}
SGD_CONSTRAINTS: dict[str, Constraint] = {"lr": POSITIVE, "momentum": MOMENTUM, "weight_decay": NON_NEGATIVE,
                                          "lr_min": NON_NEGATIVE, "batch_size": AT_LEAST_ONE, "epochs": AT_LEAST_ONE}


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
        """``(optimizer, scheduler)``; call ``scheduler.step()`` after each optimiser step.

        The optimiser is torch's fused SGD (one kernel over all parameters; the same update)."""
        opt = torch.optim.SGD(parameters, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                              fused=True)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_steps), eta_min=self.lr_min)
        return opt, sched


class Progress(Protocol):
    """What a method reports progress through: ``update(n)`` after each unit of work."""

    def update(self, n: int = 1) -> Any: ...


#: ``(description, total units) -> context manager yielding a Progress``; the harness passes one
#: (a tqdm bar by default) and methods never draw their own.
ProgressFactory = Callable[[str, int], Any]


@contextmanager
def no_progress(desc: str, total: int) -> Iterator[Progress]:
    """A :data:`ProgressFactory` that reports nothing."""

    class _Silent:
        def update(self, n: int = 1) -> None:
            return None

    yield _Silent()


def minibatches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Shuffled index batches ``[≤batch_size]`` covering ``range(n)`` once."""
    perm = torch.randperm(n, generator=generator)
    yield from perm.split(batch_size)


def cycle_minibatches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless shuffled index batches over ``range(n)``, reshuffled after each pass."""
    while True:
        yield from minibatches(n, batch_size, generator)


def check_finite(loss: torch.Tensor, where: str) -> None:
    """Raise :class:`NonFiniteLossError` if ``loss`` is NaN or infinite.

    Args:
        where: e.g. "jei (lambda=0.5), epoch 3"; named in the message.
    """
    if not torch.isfinite(loss).all():
        raise NonFiniteLossError(
            f"{where}: the training loss is {loss.item():g}; lower the learning rate "
            f"(--set method.lr=... or im.lr=...) or check the features; no record was written")


def im_logits(ims: Sequence[nn.Module], split: SplitFeatures, idx: torch.Tensor | slice = slice(None)
              ) -> list[torch.Tensor]:
    """Logits of the K−1 IMs on rows ``idx`` of ``split``: a list of K−1 tensors ``[B, C]``."""
    return [im(x) for im, x in zip(ims, split.rows(idx))]


def all_exit_logits(ims: Sequence[nn.Module], split: SplitFeatures, idx: torch.Tensor | slice = slice(None)
                    ) -> torch.Tensor:
    """Logits of every exit, the frozen final classifier last: ``[B, K, C]``."""
    return torch.stack([*im_logits(ims, split, idx), split.logits[idx]], dim=1)


class IMStack(nn.Module):
    """The K−1 IMs as one module: K−1 inputs ``[B, D_k]`` → ``[B, K−1, C]`` logits (for
    :func:`torch.func.functional_call`)."""

    def __init__(self, ims: nn.ModuleList):
        super().__init__()
        self.ims = ims

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack([im(x) for im, x in zip(self.ims, inputs)], dim=1)


class StackedIMs(nn.Module):
    """M copies of K−1 IMs trained side by side: their parameters stacked along a leading ``[M]``
    and run with ``torch.func.vmap`` (one batched matmul per layer instead of M).

    Args:
        ims: the K−1 IMs every copy starts from.
        copies: M.
    """

    def __init__(self, ims: nn.ModuleList, copies: int):
        super().__init__()
        one = IMStack(ims)

        def stacked(t: torch.Tensor) -> torch.Tensor:
            return t.detach().unsqueeze(0).expand(copies, *t.shape).clone()

        self.names = [k for k, _ in one.named_parameters()]
        self.params = nn.ParameterList(nn.Parameter(stacked(p)) for _, p in one.named_parameters())
        self.buffer_names = [k for k, _ in one.named_buffers()]
        for i, (_, b) in enumerate(one.named_buffers()):
            self.register_buffer(f"buffer_{i}", stacked(b))
        # the module the copies run through, without storage and not a submodule (no parameters of its own)
        object.__setattr__(self, "template", copy.deepcopy(one).to("meta"))

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """K−1 inputs ``[B, D_k]`` (shared by the copies) → logits ``[M, B, K−1, C]``."""
        buffers = [getattr(self, f"buffer_{i}") for i in range(len(self.buffer_names))]

        def one(params: list[torch.Tensor], bufs: list[torch.Tensor]) -> torch.Tensor:
            state = {**dict(zip(self.names, params)), **dict(zip(self.buffer_names, bufs))}
            return torch.func.functional_call(self.template, state, (list(inputs),))

        return torch.func.vmap(one, in_dims=(0, 0))(list(self.params), buffers)

    def im(self, m: int, k: int, x: torch.Tensor) -> torch.Tensor:
        """IM ``k`` (1-based) of copy ``m`` alone on its input ``[B, D_k]`` → logits ``[B, C]``."""
        prefix = f"ims.{k - 1}."
        state = {n[len(prefix):]: p[m] for n, p in zip(self.names, self.params) if n.startswith(prefix)}
        state.update({n[len(prefix):]: getattr(self, f"buffer_{i}")[m] for i, n in enumerate(self.buffer_names)
                      if n.startswith(prefix)})
        return torch.func.functional_call(self.template.ims[k - 1], state, (x,))

    def unstack(self, m: int, like: nn.ModuleList) -> nn.ModuleList:
        """Copy ``m`` as a plain ``nn.ModuleList`` shaped like ``like``."""
        out = IMStack(copy.deepcopy(like))
        state = {k: p[m].detach().clone() for k, p in zip(self.names, self.params)}
        state.update({k: getattr(self, f"buffer_{i}")[m].clone() for i, k in enumerate(self.buffer_names)})
        out.load_state_dict(state)
        return out.ims


@contextmanager
def eval_mode(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Put ``modules`` in eval mode for the block, then restore each one's mode."""
    was = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, w in zip(modules, was):
            m.train(w)


@torch.no_grad()
def exit_probs(ims: Sequence[nn.Module], split: SplitFeatures, chunk: int = 4096) -> torch.Tensor:
    """Softmax of every exit's logits on a whole split, ``[N, K, C]`` (IMs in eval mode)."""
    with eval_mode(ims):
        return torch.cat([all_exit_logits(ims, split, slice(i, i + chunk)).softmax(-1)
                          for i in range(0, split.n, chunk)])


def per_exit_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy ℓ_k of every exit, ``[B, K, C]`` logits → ``[B, K]``."""
    B, K, C = logits.shape
    return F.cross_entropy(logits.reshape(B * K, C), labels.repeat_interleave(K), reduction="none").view(B, K)


@torch.no_grad()
def im_val_error(ims: Sequence[nn.Module], split: SplitFeatures) -> torch.Tensor:
    """Error rate of each IM on a whole split plus 1e-3 × its cross-entropy (which breaks ties
    between epochs of equal error), ``[K−1]`` (IMs in eval mode)."""
    with eval_mode(ims):
        return torch.stack([(z.argmax(1) != split.labels).float().mean() + 1e-3 * F.cross_entropy(z, split.labels)
                            for z in im_logits(ims, split)])


class BestState:
    """The state of each of a list of modules at the lowest value of its criterion seen so far
    (selection on val): ``update`` after each epoch, ``restore`` at the end.

    Args:
        modules: the modules (one criterion value each; pass ``[module_list]`` for a joint choice).
    """

    def __init__(self, modules: Sequence[nn.Module]):
        self.modules = list(modules)
        self.value = [math.inf] * len(self.modules)
        self.epoch = [0] * len(self.modules)
        self.state: list[dict[str, torch.Tensor] | None] = [None] * len(self.modules)

    def update(self, values: Sequence[float], epoch: int) -> None:
        for i, v in enumerate(values):
            if float(v) < self.value[i]:
                self.value[i], self.epoch[i] = float(v), epoch
                self.state[i] = copy.deepcopy(self.modules[i].state_dict())

    def stalled(self, epoch: int, patience: int | None) -> bool:
        """Whether no module has improved for ``patience`` epochs."""
        return patience is not None and min(epoch - e for e in self.epoch) >= patience

    def restore(self) -> None:
        for m, state in zip(self.modules, self.state):
            if state is not None:
                m.load_state_dict(state)


def train_ims(ims: nn.ModuleList, train: SplitFeatures, schedule: SGDSchedule, generator: torch.Generator,
              where: str, progress: Progress | None = None,
              batch_loss: Callable[[list[torch.Tensor], torch.Tensor], torch.Tensor] | None = None,
              select_on: SplitFeatures | None = None, patience: int | None = None,
              criterion: Callable[[Sequence[nn.Module], SplitFeatures], torch.Tensor] | None = None) -> dict[str, Any]:
    """Train IMs with the plain sum of per-exit cross-entropies Σ_k ℓ_k (``methods.md`` §1), or with
    ``batch_loss``, for at most ``schedule.epochs`` epochs.

    With ``select_on``, the IMs are kept at their epoch of lowest ``criterion`` on that split (per
    IM, ``[K−1]``; default :func:`im_val_error`): each IM at its own epoch under the plain sum (the
    IMs are independent there: IM k's gradient involves ℓ_k only), all IMs at the epoch of the
    lowest sum under ``batch_loss``; training stops once nothing has improved for ``patience`` epochs.

    Args:
        ims: K−1 IMs (exit K is the frozen classifier, not trained), trained in place.
        batch_loss: instead of the plain sum, ``(K−1 IM logits [B, C], labels [B]) → scalar loss``
            (BoostedNet's loss).

    Returns:
        ``{"epochs": epochs run}``, with ``select_on`` also ``"best_epochs"`` (``[K−1]``, or one
        for a joint choice) and ``"val_criterion"`` (the same shape).

    Raises:
        NonFiniteLossError: the loss became NaN or infinite.
    """
    per_im = batch_loss is None
    if per_im:
        def batch_loss(logits: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
            return torch.stack([F.cross_entropy(z, y) for z in logits]).sum()

    opt, sched = schedule.build(ims.parameters(), schedule.epochs * schedule.steps_per_epoch(train.n))
    best = BestState(list(ims) if per_im else [ims])
    ims.train()
    epochs = 0
    for epoch in range(1, schedule.epochs + 1):
        for idx in minibatches(train.n, schedule.batch_size, generator):
            loss = batch_loss(im_logits(ims, train, idx), train.labels[idx])
            check_finite(loss, f"{where}, epoch {epoch}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        epochs = epoch
        if progress is not None:
            progress.update(1)
        if select_on is not None:
            values = (criterion or im_val_error)(ims, select_on)
            best.update(values.tolist() if per_im else [values.sum().item()], epoch)
            if best.stalled(epoch, patience):
                break
    out: dict[str, Any] = {"epochs": epochs}
    if select_on is not None:
        best.restore()
        out.update(best_epochs=best.epoch, val_criterion=[round(v, 5) for v in best.value])
    return out
