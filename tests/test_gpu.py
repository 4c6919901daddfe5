"""The backbone pass on CUDA (skipped, saying why, where torch sees no CUDA device): the backbone and
the batches on the device, bf16 autocast, float16 features back on the CPU, and CPU/CUDA agreement;
the runtime (``eebench latency --device cuda``)."""
from __future__ import annotations

import pytest
import torch

from eebench import paths
from eebench.backbones import BACKBONES
from eebench.harness.config import resolve
from eebench.data.splits import load_splits
from eebench.harness.features import extract_to, _load
from eebench.backbones.weights import load_backbone

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


def test_runtime_on_cuda_times_with_events_and_mostly_agrees(cli, tmp_path) -> None:
    """``eebench latency --device cuda`` on a digits run made on the CPU: it runs on the GPU (the
    record's device string), and under bf16 autocast the runtime's answers agree with the CPU
    record on nearly every sample."""
    import json

    assert cli("run", "--method", "threshold", "--device", "cpu", "--out", tmp_path)[0] == 0
    run_dir = next(tmp_path.glob("*/record.json")).parent
    status, _, err = cli("latency", run_dir, "--device", "cuda", "--batch-size", "64", "--repeats", "1")
    assert status == 0, err
    result = json.loads((run_dir / "latency.json").read_text())
    assert result["device"].startswith("cuda: ")
    assert all(p["agreement"] >= 0.98 and p["measured_speedup"] > 0 for p in result["points"])
