"""Mul-Adds counted with FlopCounterMode against hand-computed values."""
import pytest
import timm
import torch
from timm.layers import Attention
from torch import nn

from eebench.backbones.cifar_resnet import CifarResNetExits, exit_positions
from eebench.harness.costs import CostProfile, module_muladds, profile_exits


def test_linear_over_tokens():
    T, d_in, d_out = 7, 8, 5
    assert module_muladds(nn.Linear(d_in, d_out), torch.zeros(1, T, d_in)) == T * d_in * d_out


def test_attention_is_counted():
    T, d, heads = 9, 16, 4
    attn = Attention(d, num_heads=heads, qkv_bias=True)
    # qkv: T·d·3d; QK^T: heads·T·T·(d/heads); AV: the same; proj: T·d·d
    expected = T * d * 3 * d + 2 * T * T * d + T * d * d
    assert module_muladds(attn, torch.zeros(1, T, d)) == expected


def test_exit_costs_by_hand():
    p = CostProfile(block_muladds=[10, 10, 20], im_muladds=[1, 2])
    assert p.backbone_muladds == 40
    assert p.exit_muladds().tolist() == [11, 23, 43]
    assert p.exit_costs([1, 1]).tolist() == pytest.approx([12 / 40, 25 / 40, 45 / 40])
    with pytest.raises(ValueError):
        p.exit_costs([1])


def test_cifar_resnet_exit_positions_by_hand():
    """Three exits per stage at round(n·j/3): ResNet-20 (n = 3) every block, ResNet-56 (n = 9) every third."""
    assert exit_positions(3) == [1, 2, 3]
    assert exit_positions(9) == [3, 6, 9]
    assert exit_positions(5) == [2, 3, 5]                  # ResNet-32: round(5/3) = 2, round(10/3) = 3
    assert exit_positions(1) == [1]                        # ResNet-8: one block per stage, one exit
    assert exit_positions(9, exits_per_stage=1) == [9]     # one exit per residual block group
    with pytest.raises(ValueError, match="exits_per_stage"):
        exit_positions(9, exits_per_stage=0)


def test_resnet56_profile_matches_plain_backbone():
    model = timm.create_model("cifar_resnet56").eval()
    x = torch.zeros(1, 3, 32, 32)
    profile = profile_exits(CifarResNetExits(model), x, 10)
    assert profile.num_exits == 9                                   # after blocks 3, 6, ..., 27
    # exit k's block cost is three residual blocks: stage 1's are alike (16 ch, 32x32, no shortcut conv)
    assert profile.block_muladds[1] == profile.block_muladds[2] == 3 * 2 * (16 * 16 * 9 * 32 * 32)
    assert profile.backbone_muladds == module_muladds(model, x) == 125_485_696
    # IM after a stage-3 block: MLP 64*4*4 -> 256 -> 10
    assert profile.im_muladds[-1] == 1024 * 256 + 256 * 10
