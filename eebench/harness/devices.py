"""Where the backbone pass runs: ``--device auto|cpu|cuda[:N]`` (a run option, not part of the run id)."""
from __future__ import annotations

import dataclasses
import re
from typing import Any

import torch

from eebench.errors import UsageError

DEVICE_SPEC = re.compile(r"auto|cpu|cuda(:\d+)?")


def resolve_device(spec: str) -> torch.device:
    """``auto`` (CUDA where there is a device, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        UsageError: a malformed value, CUDA asked for where torch sees none, or an index out of range.
    """
    spec = str(spec).strip().lower()
    if not DEVICE_SPEC.fullmatch(spec):
        raise UsageError(f"--device {spec}: must be auto, cpu, cuda or cuda:N")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UsageError(f"--device {spec}: torch sees no CUDA device on this machine; use --device cpu (or auto)")
    device = torch.device(spec)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                         f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return device


def describe_device(device: torch.device) -> str:
    """``cpu`` or ``cuda: <device name>``, for run records."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return device.type


def pop_devices(common: dict, stages: dict[str, dict], where: str) -> dict[str, str]:
    """Take the ``device`` keys out of an executor profile: ``{stage: value}``, ``""`` for the
    top-level one (every stage).

    Raises:
        UsageError: a value that is not auto, cpu, cuda or cuda:N.
    """
    devices = {s: str(v.pop("device")) for s, v in stages.items() if isinstance(v, dict) and "device" in v}
    if "device" in common:
        devices[""] = str(common.pop("device"))
    for device in devices.values():
        if not DEVICE_SPEC.fullmatch(device):
            raise UsageError(f"{where}: device: {device}: must be auto, cpu, cuda or cuda:N")
    return devices


def stage_options(options: Any, devices: dict[str, str], stage: str) -> Any:
    """``options`` (:class:`~eebench.harness.runner.RunOptions`) with the profile's ``device`` for ``stage``
    (its own, else the profile's top-level one, else ``--device``)."""
    device = devices.get(stage) or devices.get("")
    return dataclasses.replace(options, device=device) if device else options
