"""Dynamic inference for real: a fitted method's exits executed on the frozen backbone, block by block.

At each exit k < K the runtime computes the IM input of the samples still running, runs the
method's decision (:class:`~eebench.harness.method.ExitRule`: IM, gate or scheduler, threshold) on them,
and drops the samples that exit from the batch before block k+1 (compaction: on the CPU a masked
sample costs as much as a running one, so masking saves nothing). The IM input is rounded to
float16 as the feature cache stores it, so the runtime takes the decisions the run's record was
computed from, sample for sample (one sample at a time the backbone rounds otherwise and a rounding
tie may leave elsewhere; :class:`CachedBackbone` checks the rule alone, docs/decisions.md H4).

:class:`TimeProfile` is the measured counterpart of the Mul-Add :class:`~eebench.harness.costs.CostProfile`:
seconds per sample of each block and of each exit's IM and gate, at one batch size on one device,
from which any operating point's predicted speed-up follows.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from eebench.harness.features import SplitFeatures, backbone_precision
from eebench.harness.method import ExitRule


def keep_rows(h: Any, keep: torch.Tensor) -> Any:
    """The rows ``keep`` (``[B]`` bool) of a hidden state: a tensor (samples along dim 0), or a
    tuple, named tuple or list of them (e.g. a graph batch); None stays None."""
    if h is None:
        return None
    if isinstance(h, torch.Tensor):
        return h[keep]
    if isinstance(h, tuple) and hasattr(h, "_fields"):
        return type(h)(*(keep_rows(t, keep) for t in h))
    if isinstance(h, (tuple, list)):
        return type(h)(keep_rows(t, keep) for t in h)
    raise TypeError(f"cannot drop samples from a hidden state of type {type(h).__name__}")


def _im_input(adapter: Any, k: int, h: Any) -> torch.Tensor:
    """The IM input after block k as the feature cache holds it (float16), in float32 ``[B, D_k]``."""
    return adapter.im_input(k, h).to(torch.float16).float()


@torch.no_grad()
def run_exits(adapter: Any, rule: ExitRule, x: Any, device: torch.device | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch through the backbone with ``rule``'s exits, exited samples dropped as it goes.

    Args:
        adapter: the frozen backbone (:class:`~eebench.backbones.base.ExitAdapter`), on ``device``.
        rule: one operating point's decisions, its modules on ``device``.
        x: the batch's input, on ``device``.

    Returns:
        ``(exit_index, probs)``: ``[B]`` int64 0-based exits and ``[B, C]`` the answered probabilities.
    """
    device = device or torch.device("cpu")
    K = adapter.num_blocks
    with backbone_precision(device):
        h = adapter.stem(x)
    running, state = None, None
    exit_index, probs = None, None
    for k in range(1, K + 1):
        with backbone_precision(device):
            h = adapter.block(k, h)
            f = _im_input(adapter, k, h) if k < K else adapter.head(h).float()
        if running is None:
            B = f.shape[0]
            running = torch.arange(B, device=f.device)
            exit_index = torch.full((B,), K - 1, dtype=torch.long, device=f.device)
        if k == K:
            p = rule.at_last(f, state)
            probs = p.new_empty(len(exit_index), p.shape[1]) if probs is None else probs
            probs[running] = p
            break
        out, p, state = rule.at_exit(k, f, state)
        probs = p.new_empty(len(exit_index), p.shape[1]) if probs is None else probs
        probs[running[out]] = p[out]
        exit_index[running[out]] = k - 1
        keep = ~out
        left = int(keep.sum())
        if left == 0:
            break
        if left < len(keep):            # nothing to copy where nobody leaves
            running, h, state = running[keep], keep_rows(h, keep), keep_rows(state, keep)
    return exit_index, probs


class CachedBackbone:
    """A stand-in for the backbone that answers from the feature cache, for :func:`run_exits`: the
    hidden state is each sample's row number ``[B]`` int64, a block passes it on, and the IM inputs
    and logits are the cached ones (the numbers the record's decisions were computed from). Through
    :func:`run_exits` it runs an operating point's rule in the runtime's order and batch size with no
    backbone arithmetic, which separates a rule that decides otherwise than ``predict`` from a
    backbone that rounds otherwise at another batch size.

    Args:
        split: the cached features of the samples (``[N, ΣD_k]`` float16 IM inputs, ``[N, C]`` logits).
        device: where the rule runs (the rows are gathered on the CPU and moved there).
    """

    def __init__(self, split: SplitFeatures, device: torch.device | None = None):
        self.split, self.device = split, device or torch.device("cpu")
        self.num_blocks = split.num_exits
        self.offsets = np.concatenate([[0], np.cumsum(split.dims)]).tolist()

    def stem(self, rows: torch.Tensor) -> torch.Tensor:
        return rows

    def block(self, k: int, rows: torch.Tensor) -> torch.Tensor:
        return rows

    def im_input(self, k: int, rows: torch.Tensor) -> torch.Tensor:
        """The cached IM input after block k of ``rows``: ``[B, D_k]`` float32 on the device."""
        x = self.split.stacked[rows.cpu()][:, self.offsets[k - 1]:self.offsets[k]]
        return x.float().to(self.device)

    def head(self, rows: torch.Tensor) -> torch.Tensor:
        """The cached logits of ``rows``: ``[B, C]`` float32 on the device."""
        return self.split.logits[rows.cpu()].float().to(self.device)


@torch.no_grad()
def run_plain(adapter: Any, x: Any, device: torch.device | None = None) -> torch.Tensor:
    """The plain backbone on one batch (no IM inputs): ``[B, C]`` logits."""
    with backbone_precision(device or torch.device("cpu")):
        h = adapter.stem(x)
        for k in range(1, adapter.num_blocks + 1):
            h = adapter.block(k, h)
        return adapter.head(h)


class Stopwatch:
    """Wall time of a piece of work on a device: ``perf_counter`` on the CPU, synchronised CUDA
    events on a GPU (the work queued on the device is waited for before the clock stops)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        """Run ``fn()``: ``(seconds, its result)``."""
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1000.0, out
        t0 = time.perf_counter()
        out = fn()
        return time.perf_counter() - t0, out


@dataclass
class TimeProfile:
    """Measured seconds per sample of each part of the network with exits, at one batch size on one device.

    Attributes:
        block_s: K floats, seconds per sample of block k on a full batch (the stem in block 1, the
            classifier in block K); their sum is the plain backbone's time per sample.
        exit_s: K−1 floats, seconds per sample at exit k < K: IM input, IM, gate and decision.
        plain_s: seconds per sample of the plain backbone, timed in turn with the profile, batch by
            batch (None where it was not).
    """

    block_s: list[float]
    exit_s: list[float]
    plain_s: float | None = None

    def seconds(self, exit_index: np.ndarray) -> float:
        """Predicted mean seconds per sample of an operating point whose samples leave at
        ``exit_index`` (``[N]``, 0-based): blocks 1..k and exits 1..min(k, K−1) for a sample at exit k."""
        per_exit = np.asarray(self.block_s, dtype=float)
        per_exit[:-1] += np.asarray(self.exit_s, dtype=float)
        return float(np.cumsum(per_exit)[np.asarray(exit_index)].mean())

    def speedup(self, exit_index: np.ndarray) -> float:
        """The plain backbone's time over :meth:`seconds`: the speed-up the profile predicts."""
        return float(sum(self.block_s)) / self.seconds(exit_index)

    def to_dict(self) -> dict[str, Any]:
        return {"block_s": self.block_s, "exit_s": self.exit_s, "blocks_s_per_sample": float(sum(self.block_s)),
                "plain_s_per_sample": self.plain_s}


@torch.no_grad()
def time_profile(adapter: Any, rule: ExitRule, batches: Sequence[Any], device: torch.device, repeats: int = 3,
                 progress: Any = None) -> TimeProfile:
    """Time each block and each exit (IM input, IM, gate and decision of ``rule``) on full batches,
    and the plain backbone in turn with them, batch by batch (:attr:`TimeProfile.plain_s`).

    Every sample goes through every block (nothing is dropped), so each part is timed at the batch
    size given; the median of ``repeats`` passes is kept, part by part.

    Args:
        batches: the inputs, on ``device``.
        progress: a tqdm-like bar, ``update(1)`` after each pass.

    Returns:
        the profile (seconds per sample).
    """
    K, clock = adapter.num_blocks, Stopwatch(device)
    n = sum(_batch_len(x) for x in batches)
    runs: list[np.ndarray] = []
    for _ in range(repeats):
        t = np.zeros(2 * K)                     # blocks 1..K, exits 1..K−1, the plain backbone
        for x in batches:
            t[-1] += clock(lambda: run_plain(adapter, x, device))[0]
            h: list[Any] = [x]           # the hidden state, replaced inside each timed call (its old value freed there)
            state = None
            for k in range(1, K + 1):
                def block() -> None:
                    with backbone_precision(device):
                        h[0] = adapter.block(k, adapter.stem(h[0]) if k == 1 else h[0])
                        if k == K:
                            adapter.head(h[0])
                            h[0] = None
                t[k - 1] += clock(block)[0]
                if k < K:
                    def step() -> Any:
                        with backbone_precision(device):
                            f = _im_input(adapter, k, h[0])
                        return rule.at_exit(k, f, state)[2]
                    dt, state = clock(step)
                    t[K + k - 1] += dt
        runs.append(t / n)
        if progress is not None:
            progress.update(1)
    med = np.median(np.stack(runs), axis=0)
    return TimeProfile([float(v) for v in med[:K]], [float(v) for v in med[K:-1]], float(med[-1]))


def _batch_len(x: Any) -> int:
    return int(x[0].shape[0]) if isinstance(x, tuple) else int(x.shape[0])


@dataclass
class TimedPasses:
    """Repeated timed passes over the same batches.

    Attributes:
        totals: seconds of each pass (one per repeat).
        calls: seconds of every call (one per batch per pass).
        outputs: what each call of the first pass returned.
    """

    totals: list[float]
    calls: list[float]
    outputs: list[Any]

    @property
    def median_s(self) -> float:
        """The median pass, seconds."""
        return float(statistics.median(self.totals))

    def call_ms(self, q: float) -> float:
        """The q-quantile (0..1) of the per-call latency, milliseconds."""
        return float(np.quantile(np.asarray(self.calls), q) * 1000.0)


def timed_passes(fns: Sequence[Callable[[Any], Any]], batches: Sequence[Any], device: torch.device, repeats: int,
                 progress: Any = None) -> list[TimedPasses]:
    """Call each of ``fns`` on every batch, ``repeats`` times over, timing each call (:class:`Stopwatch`).

    The functions take turns batch by batch (f₁(b₁), f₂(b₁), f₁(b₂), ...), so that a change in the
    machine's speed during the measurement falls on each alike and their ratio stays fair.

    Returns:
        one :class:`TimedPasses` per function.
    """
    clock = Stopwatch(device)
    out = [TimedPasses([], [], []) for _ in fns]
    for r in range(repeats):
        totals = [0.0] * len(fns)
        for x in batches:
            for i, fn in enumerate(fns):
                dt, result = clock(lambda: fn(x))
                totals[i] += dt
                out[i].calls.append(dt)
                if r == 0:
                    out[i].outputs.append(result)
        for i, total in enumerate(totals):
            out[i].totals.append(total)
        if progress is not None:
            progress.update(1)
    return out
