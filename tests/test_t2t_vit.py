"""T2T-ViT-7/14: size and Mul-Adds against the T2T-ViT paper, the official checkpoint layout through
the checkpoint filter, the Performer T2T layer against its equation, and the exit adapter."""
import math

import pytest
import timm
import torch

from conftest import OFFICIAL, official_shapes, write_official_checkpoint
from eebench.backbones import BACKBONES, create_model
from eebench.backbones.t2t_vit import T2TViTExits, TokenPerformer, sinusoid_table, token_grid
from eebench.harness.costs import module_muladds, profile_exits

@pytest.mark.parametrize("name, paper_params, paper_muladds", [
    ("t2t_vit_7", 4.3e6, 1.1e9),
    ("t2t_vit_14", 21.5e6, 4.8e9),
])
def test_size_and_muladds_match_the_paper(name, paper_params, paper_muladds):
    """T2T-ViT paper / README: 4.3 M and 21.5 M parameters, 1.1 G and 4.8 G MACs at 224 px.

    Counted here (attention included, a Linear over T tokens = T·in·out): 4.310 M / 21.546 M
    parameters, 1.147 G / 4.783 G Mul-Adds, which round to the paper's one-decimal figures; the
    +4 % of T2T-ViT-7 is within that rounding. Of the 1.147 G, the T2T module is 0.285 G (its two
    Performer layers run over 3,136 and 784 tokens; their 147- and 576-wide kqv projections alone
    are 0.18 G) and the 7 blocks 0.862 G.
    """
    model = timm.create_model(name).eval()
    params = sum(p.numel() for p in model.parameters())
    assert abs(params / paper_params - 1) <= 0.02, params
    muladds = module_muladds(model, torch.zeros(1, 3, 224, 224))
    assert abs(muladds / paper_muladds - 1) <= 0.15, muladds
    # the ViT blocks alone, by hand: per block 197·D·3D (qkv) + 2·197²·D (q·k, attn·v) + 197·D² (proj)
    # + 2·197·D·rD (MLP)
    D, depth, r = OFFICIAL[name]
    block = 197 * D * 3 * D + 2 * 197 * 197 * D + 197 * D * D + 2 * 197 * D * r * D
    assert module_muladds(model.blocks[0], torch.zeros(1, 197, D)) == block


@pytest.mark.parametrize("name", ["t2t_vit_7", "t2t_vit_14"])
def test_key_layout_is_the_official_one(name):
    own = {k: tuple(v.shape) for k, v in timm.create_model(name).state_dict().items()}
    assert own == official_shapes(name)


def test_official_checkpoint_loads_through_the_filter(tmp_path):
    """EMA weights preferred, ``module.`` stripped, the namespace allowed, strict (no missing or
    unexpected keys): every tensor of the model is the checkpoint's EMA tensor."""
    path = tmp_path / "71.7_T2T_ViT_7.pth.tar"
    ema = write_official_checkpoint(path, "t2t_vit_7")
    model = timm.create_model("t2t_vit_7", pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    state = model.state_dict()
    assert set(state) == set(ema)
    for k, v in ema.items():
        assert torch.equal(state[k], v), k
    # the harness path: --weights-dir holding the published file name
    model = create_model("t2t_vit_7", 1000, pretrained=True, weights_dir=tmp_path)
    assert torch.equal(model.state_dict()["blocks.6.mlp.fc2.weight"], ema["blocks.6.mlp.fc2.weight"])


def test_checkpoint_filter_adapts_resolution_and_classes(tmp_path):
    """Fine-tuning at 56 px on 10 classes: the 14×14 position table is resampled to 4×4 (the class
    token's entry kept), the 1,000-way classifier is replaced by the model's fresh one."""
    path = tmp_path / "71.7_T2T_ViT_7.pth.tar"
    ema = write_official_checkpoint(path, "t2t_vit_7")
    torch.manual_seed(0)
    model = timm.create_model("t2t_vit_7", pretrained=True, num_classes=10, img_size=56,
                              pretrained_cfg_overlay={"file": str(path)})
    state = model.state_dict()
    assert state["pos_embed"].shape == (1, 17, 256)
    assert torch.equal(state["pos_embed"][:, 0], ema["pos_embed"][:, 0])
    assert state["head.weight"].shape == (10, 256)
    assert torch.equal(state["blocks.0.attn.qkv.weight"], ema["blocks.0.attn.qkv.weight"])
    assert model(torch.zeros(2, 3, 56, 56)).shape == (2, 10)


def test_token_grid_follows_the_three_soft_splits():
    # ⌊(s + 2p − k)/stride⌋ + 1 with (7, 4, 2), (3, 2, 1), (3, 2, 1)
    assert token_grid(224) == (14, 14)   # 224 → 56 → 28 → 14
    assert token_grid(56) == (4, 4)      # 56 → 14 → 7 → 4
    assert token_grid(32) == (2, 2)      # 32 → 8 → 4 → 2
    assert token_grid(28) == (2, 2)      # 28 → 7 → 4 → 2


def test_sinusoid_table_entries():
    t = sinusoid_table(5, 8)
    assert t.shape == (1, 5, 8)
    assert t[0, 3, 0].item() == pytest.approx(math.sin(3.0))
    assert t[0, 3, 1].item() == pytest.approx(math.cos(3.0))
    assert t[0, 2, 4].item() == pytest.approx(math.sin(2 / 10000 ** (4 / 8)))
    assert t[0, 2, 7].item() == pytest.approx(math.cos(2 / 10000 ** (6 / 8)))


def test_performer_layer_equation():
    """y = v + proj(φ(q)(Σ_t φ(k_t) v_tᵀ)ᵀ / (φ(q)·Σ_t φ(k_t) + ε)), φ(x) = exp(Wx − |x|²/2)/√m,
    (k, q, v) the three slices of kqv(LN(x)); then + mlp(LN(y)); computed token by token."""
    torch.manual_seed(0)
    layer = TokenPerformer(dim=6, emb=4, kernel_ratio=0.5).eval()
    x = torch.randn(2, 5, 6)
    out = layer(x)
    k, q, v = torch.split(layer.kqv(layer.norm1(x)), 4, dim=-1)

    def phi(a):
        return torch.exp(layer.w @ a - (a @ a) / 2) / math.sqrt(2)

    for b in range(2):
        sum_phi_k = sum(phi(k[b, s]) for s in range(5))
        kv = sum(torch.outer(phi(k[b, s]), v[b, s]) for s in range(5))        # [m, emb]
        for t in range(5):
            y = (phi(q[b, t]) @ kv) / (phi(q[b, t]) @ sum_phi_k + 1e-8)
            y = v[b, t] + layer.proj(y)
            expected = y + layer.mlp(layer.norm2(y))
            torch.testing.assert_close(out[b, t], expected, rtol=1e-4, atol=1e-5)


def test_attention_uses_the_published_scale():
    """q·k is scaled by D^-1/2 (the scale the released weights were trained with), not (D/h)^-1/2."""
    model = timm.create_model("t2t_vit_7").eval()
    attn = model.blocks[0].attn
    assert attn.scale == pytest.approx(256 ** -0.5)
    x = torch.randn(1, 5, 256)
    q, k, v = attn.qkv(x).reshape(1, 5, 3, 4, 64).permute(2, 0, 3, 1, 4)
    a = ((q @ k.transpose(-2, -1)) / 16.0).softmax(-1) @ v
    torch.testing.assert_close(attn(x), attn.proj(a.transpose(1, 2).reshape(1, 5, 256)), rtol=1e-4, atol=1e-5)


def test_exit_adapter():
    """7 exits; the exit-K logits are the model's; the IM input is the class token through the
    final norm; the stem (T2T) is charged to block 1."""
    torch.manual_seed(0)
    model = create_model("t2t_vit_7", 10, pretrained_cfg_overlay={"input_size": (3, 32, 32)}).eval()
    adapter = BACKBONES.get("t2t_vit_7").adapter(model)
    assert isinstance(adapter, T2TViTExits)
    assert adapter.num_blocks == 7 and adapter.im_dims == [256] * 6
    x = torch.randn(3, 3, 32, 32)
    feats, logits = adapter.forward_exits(x)
    torch.testing.assert_close(logits, model(x))
    h = model.forward_embed(x)
    for blk in model.blocks[:2]:
        h = blk(h)
    torch.testing.assert_close(feats[1], model.norm(h[:, 0]))
    assert model.forward_intermediates(x, indices=[1])[0].shape == (3, 256)
    costs = profile_exits(adapter, x[:1], 10)
    assert costs.block_muladds[0] - costs.block_muladds[1] == module_muladds(model.tokens_to_token, x[:1])
    assert costs.im_muladds == [256 * 10] * 6
