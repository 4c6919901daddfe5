"""``eebench latency RUN_DIR``: a finished run's exits executed for real (:mod:`eebench.deploy.runtime`) on
its test samples, timed against the plain backbone, written to ``RUN_DIR/latency.json``.

For every operating point timed: the Mul-Add speed-up (1 / cost), the speed-up its measured time
profile predicts and the measured one (the plain backbone and the runtime timed in turn, batch by
batch, so that a drift of the machine's speed falls on both), with the per-call latency (p50, p90)
and the runtime's agreement with the record (same exit and class for every sample), beside the
agreement of the point's rule run on the record's own IM inputs (:class:`~eebench.deploy.runtime.CachedBackbone`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from eebench.backbones import BACKBONES
from eebench.harness.devices import DEVICE_SPEC, describe_device, resolve_device
from eebench.errors import ConfigError, UsageError
from eebench.harness.features import place
from eebench.deploy.replay import exits_path, read_record, replay
from eebench.harness.runner import RunOptions
from eebench.deploy.runtime import CachedBackbone, TimedPasses, run_exits, run_plain, time_profile, timed_passes
from eebench.records import LATENCY_FILE, write_json

LATENCY_VERSION = 1


@dataclass
class LatencyOptions:
    """How ``eebench latency`` times a run.

    Attributes:
        batch_size: samples per call (1: one sample at a time, the latency mode).
        device: ``cpu``, ``cuda`` or ``cuda:N`` (``auto``: CUDA where there is one).
        points: ``"all"``, or budgets (normalised costs): for each, the point whose val cost is nearest.
        samples: the first ``samples`` test samples (None: all of them).
        repeats: timed passes per measurement; the median is reported.
    """

    batch_size: int = 256
    device: str = "cpu"
    points: str = "all"
    samples: int | None = None
    repeats: int = 3


def parse_points(spec: str) -> list[float] | None:
    """``all`` → None; ``0.25,0.5`` → budgets ``[0.25, 0.5]``.

    Raises:
        UsageError: not ``all`` nor positive numbers separated by commas.
    """
    if spec.strip().lower() == "all":
        return None
    try:
        budgets = [float(b) for b in spec.split(",")]
    except ValueError:
        budgets = []
    if not budgets or any(not (b > 0) for b in budgets):
        raise UsageError(f"--points {spec}: give all, or budgets (normalised costs > 0) separated by commas, e.g. 0.5")
    return budgets


def grid_spec(value: Any, where: str) -> dict[str, Any] | None:
    """A sweep grid's ``latency:`` value checked: None or false (no timing), true (the defaults) or a
    mapping of :class:`LatencyOptions` fields. The device is checked by name only (the machine that
    plans a sweep need not have the GPU its jobs get).

    Raises:
        ConfigError: not one of those, an unknown field, or a value out of range.
    """
    if value is None or value is False:
        return None
    if value is True:
        return {}
    fields = set(LatencyOptions.__dataclass_fields__)
    if not isinstance(value, dict) or set(value) - fields:
        raise ConfigError(f"{where}: latency: expected true, or a mapping of {', '.join(sorted(fields))}; got {value!r}")
    try:
        opts = LatencyOptions(**value)
        for name in ("batch_size", "samples", "repeats"):
            v = getattr(opts, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise UsageError(f"{name} {v!r}: must be an integer of at least 1")
        parse_points(str(opts.points))
        if not DEVICE_SPEC.fullmatch(str(opts.device)):
            raise UsageError(f"device {opts.device}: must be auto, cpu, cuda or cuda:N")
    except UsageError as e:
        raise ConfigError(f"{where}: latency: {e}") from None
    return dict(value)


def check_options(opts: LatencyOptions) -> torch.device:
    """The device, after checking every option (before anything loads).

    Raises:
        UsageError: a batch size, sample count or repeat count below 1, a malformed ``points``,
            CUDA asked for where there is none.
    """
    for name, value in (("--batch-size", opts.batch_size), ("--samples", opts.samples), ("--repeats", opts.repeats)):
        if value is not None and value < 1:
            raise UsageError(f"{name} {value}: must be at least 1")
    parse_points(opts.points)
    return resolve_device(opts.device)


def chosen_points(record: dict[str, Any], spec: str) -> list[int]:
    """Indices of the operating points to time: all, or for each budget the point whose val cost is
    nearest it (choices are made on val), without repeats, in the record's order."""
    budgets = parse_points(spec)
    points = record["operating_points"]
    if budgets is None:
        return list(range(len(points)))
    val_costs = np.array([p["val"]["cost"] for p in points])
    return sorted({int(np.abs(val_costs - b).argmin()) for b in budgets})


def test_batches(prep: Any, backbone: str, n: int, batch_size: int, move: Any) -> tuple[list[Any], torch.Tensor]:
    """The first ``n`` test samples as the feature pass saw them (same pipeline, same order), in
    batches of ``batch_size`` moved to the device: ``(batches, labels [n])``."""
    spec = BACKBONES.get(backbone)
    dataset = spec.pipeline.dataset(prep.splits, "test", prep.adapter.model)
    loader = DataLoader(Subset(dataset, range(n)), batch_size=batch_size, shuffle=False,
                        collate_fn=spec.pipeline.collate_fn)
    batches, labels = [], []
    for x, y in tqdm(loader, desc="latency: test inputs", unit="batch", leave=False):
        batches.append(move(x))
        labels.append(torch.as_tensor(y).long())
    return batches, torch.cat(labels)


def measure(run_dir: Path, options: RunOptions, opts: LatencyOptions) -> dict[str, Any]:
    """Time the run's operating points and write ``RUN_DIR/latency.json`` atomically.

    Returns:
        what was written (see the README, "Measured speed-up").

    Raises:
        UsageError: bad options (:func:`check_options`), not a run directory, a run without saved
            exits (rerun it); CorruptCacheError, DataUnavailableError: see :func:`eebench.deploy.replay.replay`.
    """
    device = check_options(opts)
    record = read_record(run_dir)
    exits_path(run_dir)
    chosen = chosen_points(record, opts.points)
    replayed = replay(run_dir, options)
    prep, fitted = replayed.prep, replayed.fitted
    rules = fitted.exit_rules()
    samples = np.load(Path(run_dir) / "samples.npz")
    n_test = samples["exit_index"].shape[1]
    n = min(opts.samples or n_test, n_test)
    adapter = prep.adapter
    move = place(adapter, device)
    for rule in rules:
        for m in rule.modules:
            m.to(device).eval()
    batches, labels = test_batches(prep, record["config"]["backbone"], n, opts.batch_size, move)
    exit_costs = prep.costs.exit_costs(fitted.gate_muladds)
    cached = CachedBackbone(prep.features["test"], device)
    row_batches = torch.arange(n, device=device).split(opts.batch_size)

    def same_as_record(i: int, outputs: list[tuple[torch.Tensor, torch.Tensor]]
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(exit_index [n], prediction [n], same [n] bool)``: the runtime's exits and classes, and where
        both are the record's."""
        exit_index = torch.cat([e for e, _ in outputs]).cpu().numpy()
        prediction = torch.cat([p.argmax(1) for _, p in outputs]).cpu().numpy()
        same = (exit_index == samples["exit_index"][i][:n]) & (prediction == samples["prediction"][i][:n])
        return exit_index, prediction, same

    def plain_fn(x: Any) -> Any:
        return run_plain(adapter, x, device)

    plain_calls: list[float] = []
    plain_totals: list[float] = []
    with tqdm(total=opts.repeats * (1 + len(chosen)) + 1, desc=f"latency (batch {opts.batch_size})", unit="pass",
              leave=False) as bar:
        timed_passes([plain_fn, lambda x: run_exits(adapter, rules[chosen[0]], x, device)], batches, device, 1, bar)
        profile = time_profile(adapter, rules[chosen[0]], batches, device, opts.repeats, bar)
        points = []
        for i in chosen:
            rule = rules[i]
            plain, run = timed_passes([plain_fn, lambda x: run_exits(adapter, rule, x, device)], batches, device,
                                      opts.repeats, bar)
            plain_calls += plain.calls
            plain_totals += plain.totals
            exit_index, prediction, same = same_as_record(i, run.outputs)
            decided_same = same_as_record(i, [run_exits(cached, rule, r, device) for r in row_batches])[2]
            cost = float(exit_costs[exit_index].mean())
            points.append({
                "setting": record["operating_points"][i]["setting"], "cost": cost,
                "accuracy": float((prediction == labels.numpy()).mean()),
                "muladd_speedup": 1.0 / cost, "time_profile_speedup": profile.speedup(exit_index),
                "measured_speedup": plain.median_s / run.median_s, "seconds": run.median_s,
                "plain_seconds": plain.median_s, "p50_ms": run.call_ms(0.5), "p90_ms": run.call_ms(0.9),
                "exit_shares": (np.bincount(exit_index, minlength=len(exit_costs)) / n).tolist(),
                "agreement": float(same.mean()), "decision_agreement": float(decided_same.mean())})
    plain_all = TimedPasses(plain_totals, plain_calls, [])
    result = {"version": LATENCY_VERSION, "run_id": record["run_id"], "method": record["config"]["method"],
              "backbone": record["config"]["backbone"], "dataset": record["config"]["dataset"],
              "device": describe_device(device), "batch_size": opts.batch_size, "samples": n, "repeats": opts.repeats,
              "torch_threads": torch.get_num_threads(), "load_average": os.getloadavg()[0],
              "plain_s": plain_all.median_s, "plain_p50_ms": plain_all.call_ms(0.5),
              "plain_p90_ms": plain_all.call_ms(0.9),
              "time_profile": profile.to_dict(), "points": points}
    write_json(Path(run_dir) / LATENCY_FILE, result)
    return result


def summary(result: dict[str, Any]) -> str:
    """A text table of the timed points: setting, cost, accuracy, the three speed-ups, p50/p90."""
    import pandas as pd

    rows = [{**{k: f"{v:g}" if isinstance(v, float) else v for k, v in p["setting"].items()}, "cost": p["cost"], "acc %": 100 * p["accuracy"], "Mul-Add ×": p["muladd_speedup"],
             "profile ×": p["time_profile_speedup"], "measured ×": p["measured_speedup"], "p50 ms": p["p50_ms"],
             "p90 ms": p["p90_ms"], "agree %": 100 * p["agreement"],
             "rule agrees %": 100 * p["decision_agreement"]} for p in result["points"]]
    head = (f"{result['method']} on {result['dataset']} / {result['backbone']}, {result['device']}, batch "
            f"{result['batch_size']}, {result['samples']} samples, median of {result['repeats']}: plain backbone "
            f"{result['plain_s']:.3f} s (p50 {result['plain_p50_ms']:.2f} ms per call)")
    lines = [head, pd.DataFrame(rows).to_string(index=False, float_format=lambda x: f"{x:.3f}")]
    for p in result["points"]:
        other = round((1 - p["agreement"]) * result["samples"])
        if p["decision_agreement"] < 1:
            lines.append(f"{p['setting']}: the rule decides otherwise than the record on "
                         f"{round((1 - p['decision_agreement']) * result['samples'])} samples of its own IM inputs: "
                         f"a bug in the method's exit_rules; please report it")
        elif other:
            lines.append(f"{p['setting']}: {other} of {result['samples']} samples take another exit or class than the "
                         f"record, where the rule on the record's IM inputs agrees on all: the backbone rounds the "
                         f"IM inputs otherwise at batch {result['batch_size']} than the feature pass "
                         f"(docs/decisions.md H4)")
    return "\n".join(lines)
