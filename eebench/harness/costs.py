"""Inference cost in Mul-Adds, counted with :class:`torch.utils.flop_counter.FlopCounterMode`.

One Mul-Add is two FLOPs as FlopCounterMode counts them (a matmul of ``[T, in] @ [in, out]``
is ``2·T·in·out`` FLOPs). Every count runs on one sample with PyTorch's math attention kernel
forced (``sdpa_kernel(SDPBackend.MATH)``), so attention is counted on CPU too, and a Linear over
T tokens counts ``T·in·out`` — the two faults of the published JEI-DNN counter (``methods.md``,
§6 and Metrics). Element-wise ops, norms and pooling are not counted, as is the convention.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


def count_muladds(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[int, Any]:
    """Run ``fn(*args, **kwargs)`` under a FLOP counter with math attention.

    Returns:
        ``(muladds, output)``: Mul-Adds (FLOPs / 2, an int) and what ``fn`` returned.
    """
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        out = fn(*args, **kwargs)
    return counter.get_total_flops() // 2, out


def module_muladds(module: torch.nn.Module, *example: Any) -> int:
    """Mul-Adds of one forward pass of ``module`` on ``example`` (give one sample: batch size 1)."""
    return count_muladds(module, *example)[0]


@dataclass
class CostProfile:
    """Mul-Adds per sample of each backbone block and each IM (exits 1..K−1).

    Attributes:
        block_muladds: K ints; the stem is charged to block 1 and the classifier to block K.
        im_muladds: K−1 ints; the IM input (pooling, final norm) and the IM itself, exit k < K.
    """

    block_muladds: list[int]
    im_muladds: list[int]

    @property
    def num_exits(self) -> int:
        return len(self.block_muladds)

    @property
    def backbone_muladds(self) -> int:
        """Mul-Adds of the plain backbone with no exits: the normaliser of ``cost``."""
        return int(sum(self.block_muladds))

    def exit_muladds(self, gate_muladds: Sequence[int] | None = None) -> np.ndarray:
        """Absolute cumulative Mul-Adds of stopping at each exit, ``[K]``.

        Stopping at exit k costs blocks 1..k plus every IM and gate evaluated on the way
        (exits 1..min(k, K−1)); ``gate_muladds`` has one entry per exit k < K (None: no gates).

        Raises:
            ValueError: ``gate_muladds`` does not have K−1 entries.
        """
        K = self.num_exits
        gates = np.zeros(K - 1) if gate_muladds is None else np.asarray(gate_muladds, dtype=float)
        if gates.shape != (K - 1,):
            raise ValueError(f"gate_muladds needs {K - 1} entries, got {gates.shape}")
        per_exit = np.asarray(self.block_muladds, dtype=float)
        per_exit[:-1] += np.asarray(self.im_muladds, dtype=float) + gates
        return np.cumsum(per_exit)

    def exit_costs(self, gate_muladds: Sequence[int] | None = None) -> np.ndarray:
        """Normalised cumulative cost c_k = exit_muladds / backbone_muladds, ``[K]`` (c_K > 1 with exits)."""
        return self.exit_muladds(gate_muladds) / self.backbone_muladds

    def to_dict(self) -> dict[str, Any]:
        return {"block_muladds": list(map(int, self.block_muladds)), "im_muladds": list(map(int, self.im_muladds)),
                "backbone_muladds": self.backbone_muladds}


def profile_exits(adapter: Any, example: Any, num_classes: int) -> CostProfile:
    """Measure the cost profile of an :class:`~eebench.backbones.base.ExitAdapter` on one sample.

    Args:
        adapter: the exit adapter (frozen backbone).
        example: one input sample with a batch dimension of 1 (e.g. ``[1, 3, 32, 32]``).
        num_classes: C, for building the IMs whose cost is counted.
    """
    blocks, ims = [], []
    stem_cost, h = count_muladds(adapter.stem, example)
    for k in range(1, adapter.num_blocks + 1):
        cost, h = count_muladds(adapter.block, k, h)
        if k == 1:
            cost += stem_cost
        if k < adapter.num_blocks:
            im = adapter.make_im(k, num_classes).eval()
            ims.append(count_muladds(lambda: im(adapter.im_input(k, h)))[0])
        else:
            cost += count_muladds(adapter.head, h)[0]
        blocks.append(cost)
    return CostProfile(blocks, ims)
