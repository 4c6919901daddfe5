"""Mul-Adds counted with FlopCounterMode against hand-computed values."""
import pytest
import timm
import torch
from timm.layers import Attention
from torch import nn

from eebench.backbones.cifar_resnet import CifarResNetExits
from eebench.costs import CostProfile, module_muladds, profile_exits


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


def test_resnet56_profile_matches_plain_backbone():
    model = timm.create_model("cifar_resnet56").eval()
    x = torch.zeros(1, 3, 32, 32)
    profile = profile_exits(CifarResNetExits(model), x, 10)
    assert profile.num_exits == 27
    assert profile.backbone_muladds == module_muladds(model, x) == 125_485_696
    # IM after a stage-3 block: MLP 64*4*4 -> 256 -> 10
    assert profile.im_muladds[-1] == 1024 * 256 + 256 * 10
