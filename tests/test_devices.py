"""--device: where the backbone pass runs (CPU checks; tests/test_gpu.py holds the CUDA ones)."""
from __future__ import annotations

import copy

import pytest
import torch

from conftest import check_replay, read_record
from eebench.harness.devices import describe_device, resolve_device
from eebench.errors import UsageError
from eebench.sweep.launchers import load_profile
from eebench.harness.runner import RunOptions


def test_device_values() -> None:
    assert resolve_device("cpu") == torch.device("cpu") and describe_device(torch.device("cpu")) == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UsageError, match="must be auto, cpu, cuda or cuda:N"):
        resolve_device("gpu0")
    with pytest.raises(UsageError, match="cuda:0..cuda:|no CUDA device"):
        resolve_device("cuda:99")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: --device cuda is valid here")
def test_cuda_without_cuda_exits_2_before_anything(cli, tmp_path) -> None:
    status, _, err = cli("run", "--method", "jei", "--dataset", "digits", "--device", "cuda", "--out", tmp_path)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert status == 2 and len(lines) == 1 and "no CUDA device" in lines[0] and "--device cpu" in lines[0]
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def without_timings(record: dict) -> dict:
    out = copy.deepcopy(record)
    for key in ("timings", "created"):
        out.pop(key)
    out["features"].pop("reused")
    out["ims"]["stage"].pop("reused")
    return out


def test_cpu_and_auto_give_the_same_record_here(cli, tmp_path) -> None:
    """The device is not in the run id; on a machine without CUDA, auto is the CPU, number for number."""
    flags = ["run", "--method", "jei", "--dataset", "digits"]
    assert cli(*flags, "--device", "cpu", "--out", tmp_path / "cpu")[0] == 0
    assert cli(*flags, "--device", "auto", "--out", tmp_path / "auto")[0] == 0
    a, b = read_record(tmp_path / "cpu"), read_record(tmp_path / "auto")
    check_replay(tmp_path / "cpu")
    assert a["run_id"] == b["run_id"]
    if not torch.cuda.is_available():
        a, b = without_timings(a), without_timings(b)
        assert not [k for k in a if a[k] != b.get(k)], {k: (a[k], b.get(k)) for k in a if a[k] != b.get(k)}


def test_profile_device_per_stage(tmp_path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("timeout_min: 5\ndevice: cpu\nfeatures: {device: cuda, cpus_per_task: 4}\nruns: {cpus_per_task: 2}\n")
    profile = load_profile(path)
    options = RunOptions(device="auto")
    assert profile.options("features", options).device == "cuda"
    assert profile.options("runs", options).device == "cpu"
    assert "device" not in profile.stage("features")           # not a submitit parameter
    path.write_text("features: {device: tpu}\n")
    with pytest.raises(UsageError, match="device: tpu"):
        load_profile(path)
