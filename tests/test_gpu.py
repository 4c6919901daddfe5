"""The backbone pass on CUDA (skipped, saying why, where torch sees no CUDA device): the backbone and
the batches on the device, bf16 autocast, float16 features back on the CPU, and CPU/CUDA agreement."""
from __future__ import annotations

import pytest
import torch

from eebench import paths
from eebench.backbones import BACKBONES
from eebench.config import resolve
from eebench.data import load_splits
from eebench.features import extract_to, _load
from eebench.weights import load_backbone

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device on this machine")]


def test_feature_pass_on_cuda_matches_the_cpu(tmp_path) -> None:
    config = resolve("threshold", "digits")
    splits = load_splits("digits", config.dataset_params)
    spec = BACKBONES.get(config.backbone)
    model, _ = load_backbone(config.backbone, splits, None, paths.cache_dir(), config.weights, config.recipe)
    adapter = spec.adapter(model)
    data = spec.pipeline.dataset(splits, "test", model)
    for device in ("cpu", "cuda"):
        (tmp_path / device).mkdir()
        extract_to(adapter, data, tmp_path / device, "test", 64, 0, device=torch.device(device))
        adapter.to("cpu")
    cpu = _load(tmp_path / "cpu" / "test-00000.safetensors", adapter.num_blocks)
    cuda = _load(tmp_path / "cuda" / "test-00000.safetensors", adapter.num_blocks)
    assert cuda.stacked.dtype == torch.float16 and cuda.stacked.device.type == "cpu"
    # bf16 autocast: 8 mantissa bits; the exits' answers agree on nearly every sample
    assert (cpu.logits.argmax(1) == cuda.logits.argmax(1)).float().mean() >= 0.99
    torch.testing.assert_close(cuda.stacked.float(), cpu.stacked.float(), rtol=0.05, atol=0.05)
