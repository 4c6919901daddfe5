"""The early-exit view of a frozen backbone.

An :class:`ExitAdapter` wraps a timm model and answers the small vocabulary every method and
the feature cache rely on: the backbone's K blocks in order (``stem``, ``block``, ``head``), the
input of the intermediate inference module (IM) after block k (``im_input``), and the IM design
(``make_im``). Exit k ∈ {1..K} sits after block k; exit K is the backbone's own classifier.
The IM design is a property of the adapter, identical for every method (``methods.md``,
common setting).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


class ExitAdapter(nn.Module):
    """A frozen backbone seen as K blocks with an IM input after each of the first K−1.

    Subclasses set ``num_blocks`` and ``im_dims`` and implement the five hooks below. The wrapped
    model is put in eval mode and its parameters are frozen.

    Attributes:
        num_blocks: K, the number of blocks and of exits.
        im_dims: ``[D_1, ..., D_{K-1}]``, the width of each IM input.
        exits_doc: one line saying where the exits sit and what the IMs are.
    """

    num_blocks: int
    im_dims: list[int]
    exits_doc: str = ""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> "ExitAdapter":  # the backbone stays frozen in eval mode
        return super().train(False)

    # --- hooks -------------------------------------------------------------------------------
    def stem(self, x: Any) -> Any:
        """Input → hidden state entering block 1 (its Mul-Adds are charged to block 1)."""
        raise NotImplementedError

    def block(self, k: int, h: Any) -> Any:
        """Apply block ``k`` (1-based) to the hidden state ``h``."""
        raise NotImplementedError

    def head(self, h: Any) -> torch.Tensor:
        """Hidden state after block K → logits ``[B, C]`` (charged to block K)."""
        raise NotImplementedError

    def im_input(self, k: int, h: Any) -> torch.Tensor:
        """Hidden state after block ``k`` < K → IM input ``[B, D_k]`` (charged to IM k)."""
        raise NotImplementedError

    def make_im(self, k: int, num_classes: int) -> nn.Module:
        """A fresh, trainable IM for exit ``k`` < K: ``[B, D_k]`` → logits ``[B, num_classes]``."""
        raise NotImplementedError

    # --- derived -----------------------------------------------------------------------------
    @torch.no_grad()
    def forward_exits(self, x: Any) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Run the backbone once.

        Returns:
            ``(im_inputs, logits)``: K−1 tensors ``[B, D_k]`` (the IM inputs after blocks
            1..K−1) and the backbone's logits ``[B, C]`` (exit K).
        """
        h = self.stem(x)
        feats = []
        for k in range(1, self.num_blocks + 1):
            h = self.block(k, h)
            if k < self.num_blocks:
                feats.append(self.im_input(k, h))
        return feats, self.head(h)

    def forward(self, x: Any) -> torch.Tensor:
        return self.forward_exits(x)[1]


class MLPExit(nn.Sequential):
    """IM with one hidden layer: ``Linear(D, H) → ReLU → Linear(H, C)``; ``[B, D]`` → ``[B, C]``."""

    def __init__(self, in_dim: int, hidden: int, num_classes: int):
        super().__init__(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))
