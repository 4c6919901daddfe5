"""The GRIT-style graph transformer: shapes and exits, padding and node-order invariance, attention
conditioned on RRWP, and its Mul-Adds (attention and RRWP projections included) by hand."""
import numpy as np
import pytest
import timm
import torch
from torch import nn

from eebench.backbones import create_model
from eebench.backbones.grit import GritExits, PairLinear
from eebench.harness.costs import module_muladds, profile_exits
from eebench.data.graphs import GraphBatch, collate_graphs, rrwp


def knn_graph(n: int, seed: int, k: int = 8, steps: int = 8):
    """A random point cloud in the unit square as an (intensity, x, y) graph with k-NN edges."""
    rng = np.random.default_rng(seed)
    xy = rng.random((n, 2))
    dist = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(n) * 10
    nb = np.argsort(dist, axis=1)[:, :k]
    edge_index = np.stack([np.repeat(np.arange(n), k), nb.reshape(-1)])
    x = torch.tensor(np.column_stack([rng.random(n), xy]), dtype=torch.float32)
    return (x, rrwp(edge_index, n, steps)), int(rng.integers(10))


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    m = create_model("grit", 10).eval()
    for blk in m.blocks:  # the RRWP projections start at zero; give them weights so they matter
        nn.init.normal_(blk.attn.pair.weight, std=0.5)
    return m


def test_registered_with_timm():
    assert "grit" in timm.list_models("grit")
    m = timm.create_model("grit", num_classes=7)
    assert m.get_classifier().out_features == 7 and len(m.blocks) == 6 and m.embed_dim == 64


def test_shapes_and_exits(model):
    batch, _ = collate_graphs([knn_graph(n, s) for s, n in enumerate((70, 52, 75))])
    adapter = GritExits(model)
    assert adapter.num_blocks == 6 and adapter.im_dims == [64] * 5
    ims, logits = adapter.forward_exits(batch)
    assert len(ims) == 5 and all(f.shape == (3, 64) for f in ims) and logits.shape == (3, 10)
    torch.testing.assert_close(logits, model(batch))
    # IM input after block k: masked node mean of the final-normed states
    with torch.no_grad():
        h = model.embed(batch)
        for blk in model.blocks[:3]:
            h = blk(h, batch.rrwp, batch.node_mask)
        m = batch.node_mask[..., None].float()
        expected = (model.norm(h) * m).sum(1) / m.sum(1)
    torch.testing.assert_close(ims[2], expected)
    im = adapter.make_im(1, 10)
    assert isinstance(im, nn.Linear) and (im.in_features, im.out_features) == (64, 10)


def test_padding_does_not_change_outputs(model):
    graphs = [knn_graph(n, 10 + s) for s, n in enumerate((75, 44, 63))]
    batch, _ = collate_graphs(graphs)
    # fill the padding with garbage: only the mask may keep it out
    pad = ~batch.node_mask
    node_feat = batch.node_feat.masked_fill(pad[..., None], 5.0)
    pairs = batch.rrwp.masked_fill(pad[:, None, None, :] | pad[:, None, :, None], 3.0)
    noisy = GraphBatch(node_feat, batch.node_mask, pairs)
    adapter = GritExits(model)
    ims, logits = adapter.forward_exits(noisy)
    for b, g in enumerate(graphs):
        alone, _ = collate_graphs([g])
        ims1, logits1 = adapter.forward_exits(alone)
        torch.testing.assert_close(logits[b:b + 1], logits1, atol=1e-5, rtol=1e-5)
        for f, f1 in zip(ims, ims1):
            torch.testing.assert_close(f[b:b + 1], f1, atol=1e-5, rtol=1e-5)


def test_node_order_does_not_matter(model):
    (x, p), _ = knn_graph(60, 3)
    perm = torch.randperm(60, generator=torch.Generator().manual_seed(1))
    a, _ = collate_graphs([((x, p), 0)])
    b, _ = collate_graphs([((x[perm], p[:, perm][:, :, perm]), 0)])
    torch.testing.assert_close(model(a), model(b), atol=1e-5, rtol=1e-5)


def test_attention_is_conditioned_on_rrwp(model):
    (x, p), _ = knn_graph(50, 4)
    other = p * torch.eye(50)                 # drop the off-diagonal walk probabilities, keep the node encodings
    a, _ = collate_graphs([((x, p), 0)])
    b, _ = collate_graphs([((x, other), 0)])
    with torch.no_grad():
        h = model.embed(a)
        torch.testing.assert_close(h, model.embed(b))
        out_a, out_b = (model.blocks[0].attn(model.blocks[0].norm1(h), g.rrwp, g.node_mask) for g in (a, b))
    # at initialisation attention is near uniform, so outputs vary little across nodes; the RRWP
    # moves them by a sizeable share of that variation
    spread = (out_a - out_a.mean(1, keepdim=True)).abs().max()
    assert (out_a - out_b).abs().max() > 0.2 * spread
    assert not torch.allclose(model(a), model(b))
    fresh = create_model("grit", 10).eval()     # zero-initialised pair projections: only the diagonal enters
    torch.testing.assert_close(fresh(a), fresh(b))


def test_pair_linear_is_a_linear_per_pair():
    lin = PairLinear(8, 6)
    pairs = torch.rand(2, 8, 5, 5)
    expected = nn.functional.linear(pairs.permute(0, 2, 3, 1), lin.weight, lin.bias).permute(0, 3, 1, 2)
    torch.testing.assert_close(lin(pairs), expected)
    assert module_muladds(lin, pairs[:1]) == 5 * 5 * 8 * 6


def test_muladds_by_hand(model):
    n, D, H, K, F, C, r = 70, 64, 4, 8, 3, 10, 2
    example, _ = collate_graphs([knn_graph(n, 5)])
    per_block = (n * D * 3 * D          # qkv
                 + n * n * K * 2 * H    # RRWP → per-head gate and bias
                 + 2 * n * n * D        # q k^T and attention · v over H heads of D/H
                 + n * D * D            # output projection
                 + 2 * n * D * r * D)   # MLP
    profile = profile_exits(GritExits(model), example, C)
    assert profile.block_muladds == [n * (F + K) * D + per_block] + [per_block] * 4 + [per_block + D * C]
    assert profile.im_muladds == [D * C] * 5
    assert profile.backbone_muladds == module_muladds(model, example)  # the plain model, counted whole
