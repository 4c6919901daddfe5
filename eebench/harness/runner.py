"""One run: dataset → frozen backbone → feature cache → method → operating points → metrics → record."""
from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from eebench import paths
from eebench.backbones import BACKBONES
from eebench.harness.config import RunConfig
from eebench.harness.costs import CostProfile, profile_exits
from eebench.data.spec import SPLITS
from eebench.data.splits import DataSplits, indices_sha256, load_splits, policy_rows
from eebench.harness.devices import describe_device, resolve_device
from eebench.harness.features import FeatureCache, SplitFeatures, feature_key, state_dict_sha256
from eebench.harness.im_stage import IMStage, im_schedule
from eebench.harness.method import ExitTask, FittedMethod, OperatingPoint, load_methods
from eebench.harness.metrics import SET_SIZE_ALPHA, conformal_set_sizes, evaluate
from eebench.integrity import save_hashed
from eebench.records import git_revision, versions, write_json, write_npz
from eebench.harness.threads import data_workers, fit_threads, torch_threads
from eebench.backbones.weights import load_backbone

log = logging.getLogger(__name__)

#: The fitted IMs, gates, schedulers and thresholds of a run, beside its record (:func:`save_exits`).
EXITS_FILE = "exits.safetensors"
EXITS_VERSION = 1


@dataclass
class RunOptions:
    """Where things are and how the backbone pass runs; none of it changes the numbers."""

    data_dir: Path | None = None
    weights_dir: Path | None = None
    cache_dir: Path | None = None
    out_dir: Path = Path("runs")
    batch_size: int = 256
    num_workers: int | None = None   # of the backbone pass (None: eebench.harness.threads.data_workers where it runs)
    device: str = "auto"     # of the backbone pass: auto | cpu | cuda[:N] (eebench.harness.devices)
    latency: dict[str, Any] | None = None   # a sweep's ``latency:``: time each run after it (eebench.deploy.latency)


@dataclass
class Prepared:
    """A dataset's features through a backbone, and what they came from."""

    splits: DataSplits
    adapter: Any
    features: dict[str, SplitFeatures]
    costs: CostProfile
    key: str
    reused: bool
    weights: dict[str, str]
    feature_device: str = "cpu"   # where the backbone pass that built the cache ran

    def make_ims(self) -> nn.ModuleList:
        """K−1 fresh IMs of the backbone's IM design for the dataset's C classes."""
        C = self.splits.spec.num_classes
        return nn.ModuleList(self.adapter.make_im(k, C) for k in range(1, self.costs.num_exits))


class Timer:
    """Seconds per named stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t0, 3)


def prepare_features(dataset: str, backbone: str, dataset_params: dict[str, Any], options: RunOptions,
                     timer: Timer | None = None, weights: str = "auto", recipe: dict[str, Any] | None = None,
                     backbone_params: dict[str, Any] | None = None) -> Prepared:
    """Load the data and the frozen backbone; reuse or build the feature cache and the cost profile.

    ``backbone_params`` go to the exit adapter (``exits`` of a ``timm:NAME`` backbone).

    Raises:
        DataUnavailableError, UsageError, CorruptCacheError: see :func:`load_splits`,
            :func:`load_backbone`, :meth:`FeatureCache.load`.
    """
    timer = timer or Timer()
    cache_root = paths.cache_dir(options.cache_dir)
    with timer.stage("data"):
        splits = load_splits(dataset, dataset_params, paths.data_dir(options.data_dir), cache_root)
    with timer.stage("backbone"):
        spec = BACKBONES.get(backbone)
        model, source = load_backbone(backbone, splits, paths.weights_dir(options.weights_dir), cache_root, weights,
                                      recipe)
        adapter = spec.adapter(model, **(backbone_params or {}))
        weights_sha = state_dict_sha256(model)
    key = features_key(spec, model, adapter, splits, weights_sha)
    cache = FeatureCache(cache_root)
    with timer.stage("features"), cache.lock(key):
        if cache.exists(key):
            features, meta = cache.load(key)
            log.info("features: reusing cache %s (%s)", key, cache.path(key))
            reused = True
        else:
            log.info("features: building cache %s: one backbone pass over %s", key,
                     ", ".join(f"{s} ({len(splits.indices[s][1])})" for s in SPLITS))
            costs = profile_exits(adapter, spec.pipeline.example(splits, model), splits.spec.num_classes)
            meta = {"costs": costs.to_dict(), "dataset": dataset, "backbone": spec.name, "weights_sha256": weights_sha,
                    "weights_source": source, "num_exits": adapter.num_blocks, "data_key": splits.key()}
            device = resolve_device(options.device)
            cache.build(key, {s: spec.pipeline.dataset(splits, s, model) for s in SPLITS}, adapter,
                        {**meta, "device": describe_device(device)}, options.batch_size,
                        data_workers() if options.num_workers is None else options.num_workers,
                        spec.pipeline.collate_fn, device=device)
            adapter.to("cpu")
            features, meta = cache.load(key)
            reused = False
    costs = CostProfile(meta["costs"]["block_muladds"], meta["costs"]["im_muladds"])
    return Prepared(splits, adapter, features, costs, key, reused,
                    {"source": source, "sha256": weights_sha}, meta.get("device", "cpu"))


def features_key(spec: Any, model: nn.Module, adapter: Any, splits: DataSplits, weights_sha: str | None = None) -> str:
    """The feature cache key of ``model`` (a :class:`~eebench.backbones.BackboneSpec`'s network and
    its exit adapter) on ``splits``: it changes with the weights, the data and their splits, the
    preprocessing and the exit design."""
    return feature_key(weights=weights_sha or state_dict_sha256(model), data=splits.key(),
                       preprocessing=spec.pipeline.describe(model), exits=adapter.exits_doc,
                       im_dims=adapter.im_dims, backbone=spec.name)


@contextmanager
def tqdm_progress(desc: str, total: int) -> Iterator[Any]:
    """The harness's progress bars (tqdm; silenced with ``TQDM_DISABLE=1``)."""
    with tqdm(total=total, desc=desc, leave=False) as bar:
        yield bar


def carve_policy(train: SplitFeatures, val: SplitFeatures, val_rows: tuple[str, np.ndarray],
                 dataset_params: dict[str, Any]) -> tuple[SplitFeatures, SplitFeatures, dict[str, Any]]:
    """The features exit policies learn on and the features choices are made on
    (:func:`eebench.data.splits.policy_rows`), with their description for the record.

    Returns:
        ``(policy, val, splits_info)``: ``policy`` is ``train`` when ``policy_fraction`` is 0.
    """
    carve = policy_rows(val.n, dataset_params)
    if carve is None:
        return train, val, {"policy": {"source": "train"}}

    def describe(rows: np.ndarray) -> dict[str, Any]:
        return {"source": val_rows[0], "carved_from": "val", "n": int(len(rows)),
                "indices_sha256": indices_sha256(np.asarray(val_rows[1])[rows])}

    info = {"policy": describe(carve[0]), "val": describe(carve[1])}
    return val.subset(torch.as_tensor(carve[0])), val.subset(torch.as_tensor(carve[1])), info


def exit_task(prep: Prepared, config: RunConfig, cache_dir: Path | None = None,
              progress: Any = tqdm_progress) -> tuple[ExitTask, IMStage, dict[str, Any]]:
    """What a method of ``config`` may fit on: the features of ``train`` (read from disk by rows where
    the cache left it there), the policy and val halves of ``val`` (in memory, :func:`carve_policy`),
    the cost profile and the shared IM stage of ``prep``.

    Returns:
        ``(task, im_stage, splits_info)``.
    """
    f, C = prep.features, prep.splits.spec.num_classes
    policy, val, split_info = carve_policy(f["train"], f["val"].in_memory(), prep.splits.indices["val"],
                                           config.dataset_params)
    stage = IMStage(paths.cache_dir(cache_dir), prep.key, prep.make_ims, f["train"], val, config.im_params,
                    config.seed, progress)
    task = ExitTask(f["train"], policy, val, C, prep.costs, lambda k: prep.adapter.make_im(k, C), stage,
                    im_schedule(config.im_params), progress)
    return task, stage, split_info


def run(config: RunConfig, options: RunOptions) -> dict[str, Any]:
    """Run one configuration end to end and write ``OUT/<run-id>/record.json`` atomically.

    The per-sample arrays on ``test`` go to ``samples.npz`` beside it, written before the record, so
    a record always has its samples: per operating point the exit, prediction, confidence and
    conformal set size (``[P, N]``); per distinct set of exit answers (:func:`exit_sets`) every
    exit's prediction and confidence (``exit_prediction``, ``exit_confidence``, ``[S, K, N]``), and
    ``exit_set`` ``[P]``, which set each point answers with.
    A run that fails writes nothing.

    Returns:
        the record (a dict, see the README for its fields).
    """
    timer = Timer()
    t_start = time.perf_counter()
    method = load_methods().get(config.method)
    prep = prepare_features(config.dataset, config.backbone, config.dataset_params, options, timer, config.weights,
                            config.recipe, config.backbone_params)
    threads = {"backbone pass": torch.get_num_threads(), "fits": fit_threads()}
    with torch_threads(threads["fits"]):
        return _fit_and_record(config, options, method, prep, timer, t_start, threads)


def _fit_and_record(config: RunConfig, options: RunOptions, method: Any, prep: Prepared, timer: Timer,
                    t_start: float, threads: dict[str, int]) -> dict[str, Any]:
    """:func:`run` after the backbone pass: the fit, its points on val, calib and test, the metrics,
    and the record with its per-sample arrays (on the fits' threads)."""
    f, C = prep.features, prep.splits.spec.num_classes
    task, stage, split_info = exit_task(prep, config, options.cache_dir)
    val = task.val
    torch.manual_seed(config.seed)
    with timer.stage("fit"):
        fitted = method.fit(task, config.method_params, config.seed)
    splits = {"val": val, "calib": f["calib"].in_memory(), "test": f["test"].in_memory()}
    with timer.stage("predict"):
        points = {s: fitted.predict(splits[s]) for s in splits}
    with timer.stage("metrics"):
        labels = {s: splits[s].labels.numpy() for s in splits}
        rows, set_sizes = [], []
        for p_test, p_calib, p_val in zip(points["test"], points["calib"], points["val"]):
            costs = prep.costs.exit_costs(p_test.gate_muladds)
            muladds = prep.costs.exit_muladds(p_test.gate_muladds)
            m = evaluate(p_test, labels["test"], p_calib, labels["calib"], costs, muladds)
            v = evaluate(p_val, labels["val"], None, None, costs, muladds)
            rows.append({"setting": p_test.setting, **m,
                         "val": {"accuracy": v["accuracy"], "cost": v["cost"], "ece": v["ece"]}})
            set_sizes.append(conformal_set_sizes(p_test, p_calib, labels["calib"], SET_SIZE_ALPHA))
    backbone_acc = float((splits["test"].logits.argmax(1) == splits["test"].labels).float().mean())
    timer.seconds["total"] = round(time.perf_counter() - t_start, 3)
    record = {
        "run_id": config.run_id,
        "config": config.to_dict(),
        "backbone_accuracy": backbone_acc,
        "backbone_val_accuracy": float((val.logits.argmax(1) == val.labels).float().mean()),
        "backbone": {"name": config.backbone, "weights": prep.weights, "exits": prep.adapter.exits_doc,
                     **({"params": config.backbone_params} if config.backbone_params else {}),
                     "num_exits": prep.costs.num_exits, "im_dims": prep.adapter.im_dims,
                     "muladds": prep.costs.backbone_muladds, "cost_profile": prep.costs.to_dict()},
        "num_classes": C,
        "train_class_counts": np.bincount(f["train"].labels.numpy(), minlength=C).tolist(),
        "splits": {**prep.splits.describe(), **split_info},
        "features": {"key": prep.key, "reused": prep.reused, "device": prep.feature_device},
        "ims": {"start": "shared IM stage" if stage.info else "trained by the method", "stage": stage.info},
        "exit_costs": prep.costs.exit_costs(points["test"][0].gate_muladds).tolist() if points["test"] else [],
        "operating_points": rows,
        "versions": versions(),
        "git_revision": git_revision(),
        "device": "cpu",
        "torch_threads": threads,
        "timings": timer.seconds,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    out = Path(options.out_dir) / config.run_id
    out.mkdir(parents=True, exist_ok=True)
    save_exits(out / EXITS_FILE, config.method, fitted)
    answered = [p.answered_probs for p in points["test"]]
    sets, set_of = exit_sets(points["test"])
    write_npz(out / "samples.npz", labels=labels["test"].astype(np.int16),
              exit_index=np.stack([p.exit_index for p in points["test"]]).astype(np.int16),
              prediction=np.stack([a.argmax(1).numpy() for a in answered]).astype(np.int16),
              confidence=np.stack([a.amax(1).numpy() for a in answered]).astype(np.float16),
              set_size=np.stack(set_sizes).astype(np.int16),
              exit_prediction=np.stack([s.argmax(-1).T.numpy() for s in sets]).astype(np.int16),
              exit_confidence=np.stack([s.amax(-1).T.numpy() for s in sets]).astype(np.float16),
              exit_set=np.asarray(set_of, dtype=np.int16))
    write_json(out / "record.json", record)
    return record


def exit_sets(points: list[OperatingPoint]) -> tuple[list[torch.Tensor], list[int]]:
    """The distinct exit answers of a run's points (``exit_probs``, ``[N, K, C]`` each: one for a
    method whose exits serve every setting, one per setting for JEI-DNN's per-λ IMs or differentiable
    branching), and which of them each point answers with.

    Returns:
        ``(sets, set_of)``: the distinct tensors, and ``[P]`` indices into them.
    """
    sets: list[torch.Tensor] = []
    set_of = []
    for p in points:
        i = next((j for j, s in enumerate(sets) if s is p.exit_probs or torch.equal(s, p.exit_probs)), None)
        if i is None:
            sets.append(p.exit_probs)
            i = len(sets) - 1
        set_of.append(i)
    return sets, set_of


def save_exits(path: Path, method: str, fitted: FittedMethod) -> None:
    """Write ``fitted``'s state (:meth:`~eebench.harness.method.FittedMethod.state`) to ``path`` atomically,
    each tensor with its content hash, the method and its settings in the metadata, so that the
    run can be replayed without refitting (:func:`eebench.deploy.replay.load_fitted`)."""
    tensors, settings = fitted.state()
    save_hashed(tensors, path, metadata={"eebench_exits": json.dumps(
        {"method": method, "settings": settings, "version": EXITS_VERSION})})


def summary_table(record: dict[str, Any]) -> str:
    """A short text table of the operating points: setting, cost, accuracy, ECE, inefficiency."""
    import pandas as pd

    rows = []
    for p in record["operating_points"]:
        shares = np.asarray(p["exit_shares"])
        rows.append({**{k: v for k, v in p["setting"].items()}, "cost": p["cost"], "acc %": 100 * p["accuracy"],
                     "ECE %": 100 * p["ece"], "ineff@95": p.get("inefficiency_at_95"),
                     "val acc %": 100 * p["val"]["accuracy"], "top exit": f"{shares.argmax() + 1} ({shares.max():.0%})"})
    df = pd.DataFrame(rows)
    return df.to_string(index=False, float_format=lambda x: f"{x:.3f}")
