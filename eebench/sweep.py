"""Sweeps: a YAML grid expanded into runs, launched inline, on this machine or on SLURM (submitit).

A grid (``experiments/*.yaml``)::

    include: base.yaml              # optional: a grid (or a list of grids) this one inherits from
    name: smoke                     # default: the file's stem
    datasets: [digits]              # a name or a list
    backbones: [vit_digits]         # optional; absent or null: each dataset's default backbone
    weights: [auto]                 # optional: auto | published | trained (see eebench run --set weights=)
    seeds: [0, 1, 2]                # a list, or an int n meaning 0..n-1
    test_parameters: true           # start every method from its tiny ``test_parameters``
    method_grid: false              # true: also expand each method's declared ``grid``
    dataset_params: {split_seed: 0}
    im_params: {epochs: [10, 20]}   # the shared IM stage (eebench.im_stage)
    methods:                        # method name -> parameters (a list of names: defaults)
      threshold: {q_grid: [[0.5, 1.0, 1.5], [0.25, 0.75, 1.25]]}
      jei: {im_loss: [weighted, uniform], lambdas: [[0.1, 1.0]]}

Lists expand to products: datasets × backbones × weights × methods × parameter values (method,
dataset and IM stage) × seeds. A
parameter value that is a list is a list of values to sweep, unless the parameter's default is
itself a list (``lambdas``, ``q_grid``): then a list of lists is swept and a plain list is one
value. An
included grid is read first and the including file's keys are merged over it (mappings merge key
by key, anything else is replaced; ``null`` removes an inherited entry, e.g. ``methods: {jei:
null}``). Every run is resolved through :func:`eebench.config.resolve`, so its run id is the one
``eebench run`` gives the same configuration, and an unknown method, dataset, backbone or
parameter, or a value of the wrong type, stops the expansion with one line saying what to fix. A
value of the right type that a method rejects (``im_loss: bogus``) fails that run only, when it
executes.

Stages: the feature cache of each (dataset, backbone, weights, dataset parameters) is built once, by its
own job (:class:`FeatureTask`, through :func:`eebench.runner.prepare_features`), before the runs
that read it (:class:`RunTask`, through :func:`eebench.runner.run`). On SLURM the runs of a
feature group go out as one job array that depends on its feature job (``afterok``, with
``--kill-on-invalid-dep=yes`` so a failed feature job cancels its runs instead of leaving them
pending); with ``local`` (submitit's local executor, subprocesses on this machine) and ``inline``
(this process) the feature jobs form a first wave.

Fault tolerance: a run whose record exists is skipped, at expansion and again inside the job, under
a per-run file lock (``OUT/.locks/<run-id>.lock``), so a run is never executed twice at once and a
resubmitted sweep runs only what is missing. Records are written atomically by the runner
(``samples.npz`` then ``record.json``, each through a temporary file and ``os.replace``): a record
either exists whole or not at all, and one file per run id means concurrent array tasks cannot
lose or duplicate each other's results. One failing run never cancels the others; the sweep ends
by listing every run without a record, with its error and log file, and the CLI exits 1. Both task
classes are :class:`submitit.helpers.Checkpointable`: on a time-out or pre-emption signal (SIGUSR2)
submitit requeues the task; a requeued run task continues with the runs of its chunk that have no
record yet (a run interrupted half-way starts over; the feature cache and a backbone being
trained resume from their own checkpoints).
"""
from __future__ import annotations

import copy
import itertools
import json
import logging
import os
import re
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import submitit
import yaml
from submitit.helpers import Checkpointable

from eebench.config import RunConfig, _did_you_mean, parse_set, parse_yaml
from eebench.errors import ConfigError, UsageError

if TYPE_CHECKING:   # eebench.runner imports torch: a job imports it only once its signal handlers are set
    from eebench.runner import RunOptions

log = logging.getLogger(__name__)

GRID_KEYS = ("include", "name", "datasets", "backbones", "weights", "seeds", "test_parameters", "method_grid",
             "dataset_params", "im_params", "methods")
LAUNCHERS = ("auto", "slurm", "local", "inline")
#: Stage-specific sections of a profile; every other key goes to submitit as it is.
PROFILE_STAGES = ("features", "runs")
#: Profile keys that are arguments of the executor's constructor, not of ``update_parameters``.
EXECUTOR_INIT_KEYS = ("slurm_max_num_timeout", "slurm_python", "local_max_num_timeout", "local_python")
#: Default time limit of a job (minutes) when the profile gives none (submitit's own is 5).
DEFAULT_TIMEOUT_MIN = 60
#: Slurm's default MaxArraySize is 1001: larger sets of tasks go out as several arrays.
MAX_ARRAY = 1000


# ---------------------------------------------------------------------------------------------
# grids


@dataclass
class Grid:
    """A loaded grid: its name, the file it came from, and its keys after ``include:`` merging."""

    name: str
    path: Path | None
    spec: dict[str, Any]


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``: mappings recursively, ``None`` deletes a key."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_grid_file(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    """The keys of one grid file with its includes merged under it (recursively)."""
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(p.name for p in (*chain, path))
        raise ConfigError(f"grid include cycle: {cycle}; remove one of these include: lines")
    try:
        text = path.read_text()
    except OSError as e:
        where = f" (included from {chain[-1]})" if chain else ""
        raise ConfigError(f"cannot read grid {path}{where}: {e.strerror}") from None
    data = parse_yaml(text, f"grid {path}") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"grid {path} must be a mapping of {', '.join(GRID_KEYS)}; got {type(data).__name__}")
    for key in data:
        if key not in GRID_KEYS:
            raise ConfigError(f"grid {path}: unknown key '{key}'{_did_you_mean(str(key), GRID_KEYS)}; "
                              f"valid: {', '.join(GRID_KEYS)}")
    includes = data.pop("include", None) or []
    includes = [includes] if isinstance(includes, str) else includes
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError(f"grid {path}: include: must be a file name or a list of file names")
    merged: dict[str, Any] = {}
    for inc in includes:
        merged = _merge(merged, _read_grid_file(path.parent / inc, (*chain, path)))
    merged.pop("name", None)        # a grid's name is its own, never inherited
    return _merge(merged, data)


def load_grid(path: str | Path, overrides: Sequence[str] = ()) -> Grid:
    """Read a grid file, merge its ``include:`` chain, apply ``--set`` overrides.

    Args:
        path: the grid's YAML file.
        overrides: ``KEY=VALUE`` with a dotted key into the grid and a YAML value
            (``seeds=[0]``, ``methods.jei.epochs=5``, ``datasets=mnist``; ``methods.jei=null`` removes).

    Raises:
        ConfigError: a missing or malformed file, an unknown key, an include cycle.
    """
    path = Path(path)
    spec = _read_grid_file(path, ())
    for option in overrides:
        key, value = parse_set(option)
        parts = key.split(".")
        if parts[0] not in GRID_KEYS or parts[0] == "include":
            raise ConfigError(f"--set {key}: not a grid key{_did_you_mean(parts[0], GRID_KEYS)}; "
                              f"a sweep's --set takes a dotted grid key, e.g. seeds=[0] or methods.jei.epochs=5")
        node = spec
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        if value is None:               # like null in an including grid: remove the entry
            node.pop(parts[-1], None)
        else:
            node[parts[-1]] = value
    name = str(spec.pop("name", None) or path.stem)
    return Grid(name=name, path=path, spec=spec)


def _as_list(value: Any, what: str, grid: Grid) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list):
        return value
    raise ConfigError(f"grid {grid.name}: {what} must be a name or a list, got {type(value).__name__}")


def _values(value: Any, default: Any) -> list[Any]:
    """The values a grid entry sweeps (see the module doc: a list sweeps unless the default is a list)."""
    if isinstance(default, list):
        if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
            return value
        return [value]
    return value if isinstance(value, list) else [value]


def _product(params: dict[str, Any], defaults: dict[str, Any]) -> list[dict[str, Any]]:
    keys = list(params)
    axes = [_values(params[k], defaults.get(k)) for k in keys]
    for k, axis in zip(keys, axes):
        if not axis:
            raise ConfigError(f"parameter {k}: an empty list sweeps nothing; give at least one value")
    return [dict(zip(keys, combo)) for combo in itertools.product(*axes)]


def _set_option(prefix: str, key: str, value: Any) -> str:
    """A ``--set`` option that :func:`eebench.config.resolve` reads back as exactly ``value``."""
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf")).strip()
    return f"{prefix}.{key}={text}"


def expand(grid: Grid) -> list[RunConfig]:
    """Every run of the grid, fully resolved, in grid order, one per run id.

    Returns:
        the configs; two grid entries that resolve to the same configuration give one run.

    Raises:
        UnknownNameError: an unknown method, dataset or backbone (with the valid names).
        ConfigError: an unknown parameter, a value of the wrong type, a malformed grid entry.
    """
    from eebench.config import resolve
    from eebench.data import DATASETS
    from eebench.im_stage import IM_PARAMETERS
    from eebench.method import load_methods

    spec = grid.spec
    datasets = _as_list(spec.get("datasets"), "datasets", grid) or ["digits"]
    backbones = _as_list(spec.get("backbones"), "backbones", grid) or [None]
    weights_list = _as_list(spec.get("weights"), "weights", grid) or [None]
    seeds_spec = spec.get("seeds", [0])
    if isinstance(seeds_spec, int) and not isinstance(seeds_spec, bool):
        seeds = list(range(seeds_spec))
    else:
        seeds = _as_list(seeds_spec, "seeds", grid)
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"grid {grid.name}: seeds must be a list of ints or a count, got {seeds_spec!r}")
    methods_spec = spec.get("methods")
    if isinstance(methods_spec, (str, list)):
        methods_spec = {m: {} for m in _as_list(methods_spec, "methods", grid)}
    if not isinstance(methods_spec, dict) or not methods_spec:
        raise ConfigError(f"grid {grid.name}: methods: must list at least one method, "
                          f"e.g. methods: {{threshold: {{}}}}")
    dataset_params = spec.get("dataset_params") or {}
    im_params = spec.get("im_params") or {}
    for key, value in (("dataset_params", dataset_params), ("im_params", im_params)):
        if not isinstance(value, dict):
            raise ConfigError(f"grid {grid.name}: {key} must be a mapping")
    im_combos = _product(im_params, IM_PARAMETERS)
    registry = load_methods()
    configs: dict[str, RunConfig] = {}
    for method_name, params in methods_spec.items():
        method = registry.get(str(method_name))
        params = params or {}
        if not isinstance(params, dict):
            raise ConfigError(f"grid {grid.name}: methods.{method_name} must be a mapping of parameters, "
                              f"got {type(params).__name__}")
        base: dict[str, Any] = dict(method.test_parameters) if spec.get("test_parameters") else {}
        declared = {k: list(v) for k, v in method.grid.items()} if spec.get("method_grid") else {}
        user_combos = _product(params, method.parameters)
        grid_combos = [dict(zip(declared, c)) for c in itertools.product(*declared.values())] if declared else [{}]
        for dataset in datasets:
            dspec = DATASETS.get(str(dataset))
            for dparams in _product(dataset_params, dspec.default_parameters()):
                for backbone, weights in itertools.product(backbones, weights_list):
                    for combo_grid, combo, im_combo in itertools.product(grid_combos, user_combos, im_combos):
                        method_params = {**base, **combo_grid, **combo}
                        sets = [_set_option("method", k, v) for k, v in method_params.items()]
                        sets += [_set_option("dataset", k, v) for k, v in dparams.items()]
                        sets += [_set_option("im", k, v) for k, v in im_combo.items()]
                        sets += [f"weights={weights}"] if weights is not None else []
                        for seed in seeds:
                            cfg = resolve(str(method_name), str(dataset), backbone, seed, sets)
                            configs.setdefault(cfg.run_id, cfg)
    return list(configs.values())


# ---------------------------------------------------------------------------------------------
# records


def record_path(out_dir: Path, run_id: str) -> Path:
    """``OUT/<run-id>/record.json``: written last and atomically, so it exists only when complete."""
    return Path(out_dir) / run_id / "record.json"


def has_record(out_dir: Path, run_id: str) -> bool:
    """Whether the run's record exists (then the run is finished and is never run again)."""
    return record_path(out_dir, run_id).is_file()


def read_record(out_dir: Path, run_id: str) -> dict[str, Any] | None:
    """The run's record, or None when it has none (or an unreadable one)."""
    try:
        record = json.loads(record_path(out_dir, run_id).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and record.get("run_id") == run_id else None


# ---------------------------------------------------------------------------------------------
# tasks (what a job executes)


@dataclass(frozen=True)
class FeatureStage:
    """One feature cache: a (dataset, backbone, weights, dataset parameters) that runs share."""

    dataset: str
    backbone: str
    dataset_params: tuple[tuple[str, Any], ...]
    weights: str = "auto"
    recipe_json: str = "{}"

    @staticmethod
    def of(config: RunConfig) -> "FeatureStage":
        params = tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in config.dataset_params.items()))
        return FeatureStage(config.dataset, config.backbone, params, getattr(config, "weights", "auto"),
                            json.dumps(getattr(config, "recipe", {}), sort_keys=True))

    def params(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.dataset_params}

    def recipe(self) -> dict[str, Any]:
        return json.loads(self.recipe_json)

    def __str__(self) -> str:
        return f"{self.dataset}/{self.backbone}"


def _job_setup(threads: int | None) -> None:
    """Logging to the job's log file, and torch's thread count: the CPUs SLURM gave the task
    (``SLURM_CPUS_PER_TASK``), else ``threads`` (local launcher), else torch's default."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    n = int(os.environ.get("SLURM_CPUS_PER_TASK") or 0) or threads
    if n:
        import torch

        torch.set_num_threads(n)


def _options_state(options: "RunOptions | dict[str, Any]") -> dict[str, Any]:
    """RunOptions as plain data: unpickling a task must not import torch (a SIGUSR2 that arrives
    before submitit has installed its handler would kill the job instead of requeueing it)."""
    if isinstance(options, dict):
        return dict(options)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(options).items()}


def _run_options(state: dict[str, Any]) -> "RunOptions":
    from eebench.runner import RunOptions

    paths_ = ("data_dir", "weights_dir", "cache_dir", "out_dir")
    return RunOptions(**{k: (Path(v) if k in paths_ and v is not None else v) for k, v in state.items()})


class FeatureTask(Checkpointable):
    """Build (or find) one feature cache, the first stage of a sweep.

    Calls :func:`eebench.runner.prepare_features`, which holds the cache's file lock while
    building, so concurrent jobs wait for one build. Requeued on time-out/pre-emption by
    submitit and simply called again (a backbone trained on first use resumes from its epoch
    checkpoint).

    Returns:
        ``{"key": cache key, "reused": bool}``.
    """

    def __init__(self, options: "RunOptions | dict[str, Any]", threads: int | None = None):
        self.options = _options_state(options)
        self.threads = threads

    def __call__(self, stage: FeatureStage) -> dict[str, Any]:
        _job_setup(self.threads)
        from eebench.runner import prepare_features

        log.info("features of %s %s", stage, stage.params())
        prep = prepare_features(stage.dataset, stage.backbone, stage.params(), _run_options(self.options),
                                weights=stage.weights, recipe=stage.recipe())
        return {"key": prep.key, "reused": prep.reused}


class RunFailedError(RuntimeError):
    """Runs of a run task failed (the others of the task finished); the message lists them as
    ``<run-id>: <error>`` joined by :data:`RUN_ERROR_SEPARATOR`."""


RUN_ERROR_SEPARATOR = " | "


def _run_errors(error_line: str) -> dict[str, str]:
    """``{run_id: error}`` from the last line of a failed run task (a :class:`RunFailedError`)."""
    _, sep, body = error_line.partition("RunFailedError: ")
    out = {}
    for part in body.split(RUN_ERROR_SEPARATOR) if sep else []:
        run_id, _, error = part.partition(": ")
        out[run_id.strip()] = error.strip()
    return out


def run_once(config: RunConfig, options: RunOptions) -> str:
    """Run one configuration unless its record exists; never twice at once.

    The check and the run happen under ``OUT/.locks/<run-id>.lock``: a second task given the same
    run (a resubmitted sweep while the first is still running) waits, then finds the record.
    Temporary files a killed attempt left in the run's folder are removed first.

    Returns:
        "skipped" (the record existed) or "done".

    Raises:
        whatever :func:`eebench.runner.run` raises; nothing is written then.
    """
    from filelock import FileLock

    from eebench.runner import run

    out = Path(options.out_dir)
    if has_record(out, config.run_id):
        return "skipped"
    locks = out / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    with FileLock(str(locks / f"{config.run_id}.lock")):
        if has_record(out, config.run_id):
            return "skipped"
        for tmp in (out / config.run_id).glob(".*.*"):     # write_atomic's leftovers of a killed attempt
            tmp.unlink(missing_ok=True)
        t0 = time.perf_counter()
        run(config, options)
        log.info("run %s: record written in %.1f s", config.run_id, time.perf_counter() - t0)
    return "done"


class RunTask(Checkpointable):
    """Run a chunk of runs (one array task); a failing run never stops the others.

    A run travels as ``{"run_id": id, "config": RunConfig.to_dict()}``: plain data, and the id the
    sweep expects. A job that resolves a config to another id (eebench changed between submission
    and execution) refuses it rather than write a record under an id the sweep does not know.
    On a time-out or pre-emption signal submitit calls :meth:`checkpoint` and requeues the task
    with the runs of the chunk that have no record yet.

    Returns:
        ``{run_id: "done" | "skipped"}``.

    Raises:
        RunFailedError: after the whole chunk, if any run failed (one line per failed run; the
            tracebacks are in the task's log).
    """

    def __init__(self, options: "RunOptions | dict[str, Any]", threads: int | None = None):
        self.options = _options_state(options)
        self.threads = threads

    @staticmethod
    def item(config: RunConfig) -> dict[str, Any]:
        """What a task is given for one run."""
        return {"run_id": config.run_id, "config": config.to_dict()}

    def __call__(self, runs: list[dict[str, Any]]) -> dict[str, str]:
        _job_setup(self.threads)
        options = _run_options(self.options)
        outcomes: dict[str, str] = {}
        failed: list[str] = []
        for item in runs:
            run_id = item["run_id"]
            log.info("run %s", run_id)
            try:
                config = RunConfig(**item["config"])
                if config.run_id != run_id:
                    raise UsageError(f"this job resolves run {run_id} to {config.run_id}: eebench changed since "
                                     f"the sweep was submitted; resubmit the sweep")
                outcomes[run_id] = run_once(config, options)
            except Exception as e:  # one failing run never cancels the others
                log.error("run %s failed:\n%s", run_id, traceback.format_exc())
                failed.append(f"{run_id}: {type(e).__name__}: {_one_line(str(e))}")
        if failed:
            raise RunFailedError(RUN_ERROR_SEPARATOR.join(failed))
        return outcomes

    def checkpoint(self, runs: list[dict[str, Any]]) -> Any:
        """The requeued task: the same runs minus those with a record (submitit API)."""
        left = [r for r in runs if not has_record(Path(self.options["out_dir"]), r["run_id"])]
        log.info("checkpoint: %d of %d runs of this task left; requeueing", len(left), len(runs))
        return submitit.helpers.DelayedSubmission(self, left)


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[0] if lines else ""


def _error_line(text: str) -> str:
    """The exception line of the traceback in a submitit ``FailedJobError`` message, with the
    exception's module path dropped (``eebench.errors.UsageError: ...`` → ``UsageError: ...``)."""
    parts = str(text).split("----------------------")
    body = parts[1] if len(parts) >= 3 else str(text)
    lines = [ln.strip() for ln in body.strip().splitlines() if ln.strip()]
    line = lines[-1] if lines else str(text).strip()
    return re.sub(r"^(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*(?::|$))", r"\1", line)


# ---------------------------------------------------------------------------------------------
# profiles


@dataclass
class Profile:
    """Executor parameters from ``slurm/<name>.yaml``: ``common`` for every job, ``features`` and
    ``runs`` for one stage (merged over ``common``); ``init`` for the executor's constructor."""

    path: Path | None = None
    common: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    init: dict[str, Any] = field(default_factory=dict)

    def stage(self, name: str) -> dict[str, Any]:
        params = {**self.common, **self.stages.get(name, {})}
        params.setdefault("timeout_min", DEFAULT_TIMEOUT_MIN)
        return params


def load_profile(path: str | Path | None) -> Profile:
    """Read an executor profile; every key but ``features``/``runs`` goes to submitit untouched.

    Keys are those of ``submitit.AutoExecutor.update_parameters``: the shared ones
    (``timeout_min``, ``cpus_per_task``, ``gpus_per_node``, ``mem_gb``, ``nodes``,
    ``tasks_per_node``) and ``slurm_*`` (``slurm_partition``, ``slurm_time``, ``slurm_account``,
    ``slurm_qos``, ``slurm_mem``, ``slurm_gres``, ``slurm_setup``, ``slurm_additional_parameters``,
    ...), plus ``slurm_max_num_timeout`` (requeues allowed after time-outs).

    Raises:
        ConfigError: the file is missing or malformed, or submitit rejects a key.
    """
    if path is None:
        return Profile()
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read profile {path}: {e.strerror}; see slurm/*.yaml for examples") from None
    data = parse_yaml(text, f"profile {path}") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"profile {path} must be a mapping of submitit parameters")
    stages = {s: data.pop(s) or {} for s in PROFILE_STAGES if s in data}
    init = {k: data.pop(k) for k in EXECUTOR_INIT_KEYS if k in data}
    profile = Profile(path, data, stages, init)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:     # let submitit check every key, with no cluster needed
        for stage in PROFILE_STAGES:
            try:
                submitit.AutoExecutor(folder=tmp, cluster="debug").update_parameters(**profile.stage(stage))
            except (NameError, ValueError, AssertionError, TypeError) as e:
                raise ConfigError(f"profile {path} ({stage}): submitit rejects it: {_one_line(str(e))}") from None
    return profile


# ---------------------------------------------------------------------------------------------
# sweeps


@dataclass
class Failure:
    """A run left without a record: its error (one line) and the log holding the traceback."""

    run_id: str
    error: str
    log: Path | None


@dataclass
class SweepReport:
    """What a sweep did. ``runs``: every run id of the grid; ``skipped``: those with a record before
    the sweep; ``finished``: those that got one now; ``failed``: those without one."""

    grid: str
    launcher: str
    runs: list[str]
    skipped: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    jobs: dict[str, list[str]] = field(default_factory=dict)
    log_dir: Path | None = None
    seconds: float = 0.0
    submitted_only: bool = False

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        """A few lines: counts, then one line per failed run with its error and log path."""
        if self.submitted_only:
            head = (f"sweep {self.grid}: {len(self.runs)} runs, {len(self.skipped)} already recorded, "
                    f"{len(self.runs) - len(self.skipped)} submitted in {len(self.jobs)} jobs; "
                    f"logs {self.log_dir}")
            return head
        lines = [f"sweep {self.grid} ({self.launcher}): {len(self.runs)} runs: {len(self.skipped)} already recorded, "
                 f"{len(self.finished)} finished now, {len(self.failed)} failed ({self.seconds:.1f} s)"]
        if self.failed:
            lines.append("failed runs (no record written):")
            for f in self.failed:
                lines.append(f"  {f.run_id}: {f.error}")
                lines.append(f"    log: {f.log if f.log else '(none)'}")
        return "\n".join(lines)


@dataclass
class _Unit:
    """One submitted job and what it stands for (a feature stage or a chunk of runs)."""

    job: Any
    kind: str                      # "features" | "runs"
    stage: FeatureStage
    run_ids: list[str]
    outcome: tuple[bool, str] | None = None


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    size = max(1, int(size))
    return [items[i:i + size] for i in range(0, len(items), size)]


def _job_outcome(job: Any) -> tuple[bool, str]:
    """(finished normally, one-line error) of a done submitit job."""
    try:
        job.result()
        return True, ""
    except submitit.core.utils.FailedJobError as e:
        return False, _error_line(str(e))
    except submitit.core.utils.UncompletedJobError:
        try:
            state = job.get_info().get("State") or job.state
        except Exception:  # noqa: BLE001 - the state is only for the message
            state = job.state
        return False, f"job {job.job_id} ended without a result (state {state})"


def _job_log(job: Any) -> Path:
    return Path(job.paths.stderr)


def default_log_dir(out_dir: Path, grid: Grid) -> Path:
    """``OUT/_sweeps/<grid>-<UTC time>``: a fresh submitit folder per sweep (job ids can repeat)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
    return Path(out_dir) / "_sweeps" / f"{grid.name}-{stamp}"


def resolve_launcher(launcher: str) -> str:
    """``auto`` → ``slurm`` when ``sbatch`` is on PATH, else ``local``.

    Raises:
        UsageError: ``slurm`` asked for but no SLURM client on PATH.
    """
    if launcher not in LAUNCHERS:
        raise UsageError(f"unknown launcher '{launcher}'; valid: {', '.join(LAUNCHERS)}")
    has_slurm = shutil.which("sbatch") is not None and shutil.which("srun") is not None
    if launcher == "auto":
        return "slurm" if has_slurm else "local"
    if launcher == "slurm" and not has_slurm:
        raise UsageError("--launcher slurm: no SLURM client (sbatch, srun) on PATH; start a cluster "
                         "(slurm/start-local-cluster.sh) or use --launcher local")
    return launcher


def plan(configs: list[RunConfig], out_dir: Path) -> tuple[list[str], dict[FeatureStage, list[RunConfig]]]:
    """Split a grid's runs into those already recorded and the pending ones grouped by feature stage."""
    done, groups = [], {}
    for c in configs:
        if has_record(out_dir, c.run_id):
            done.append(c.run_id)
        else:
            groups.setdefault(FeatureStage.of(c), []).append(c)
    return done, groups


def run_sweep(grid: Grid, configs: list[RunConfig], options: RunOptions, launcher: str = "auto",
              profile: Profile | None = None, max_parallel: int | None = None, runs_per_task: int = 1,
              log_dir: Path | None = None, wait: bool = True, poll_s: float = 2.0,
              progress: Callable[[str], None] | None = None) -> SweepReport:
    """Launch the runs of ``configs`` that have no record and wait for them.

    Args:
        grid: the grid (its name names the jobs: ``eebench-<grid>-features`` / ``-runs``).
        configs: from :func:`expand`.
        options: where data, weights, caches and records are (paths are made absolute).
        launcher: ``slurm`` (submitit job arrays), ``local`` (submitit's local executor,
            subprocesses, at most ``max_parallel`` at once), ``inline`` (this process,
            one after another) or ``auto``.
        profile: executor parameters (:func:`load_profile`).
        max_parallel: SLURM array parallelism, or the number of local subprocesses
            (default: half the CPUs).
        runs_per_task: runs per job (array task); >1 saves job start-up on short runs.
        log_dir: submitit folder (default :func:`default_log_dir`).
        wait: False returns right after submitting (SLURM; collect later with ``--collect``).

    Returns:
        the :class:`SweepReport`; ``failed`` lists every run left without a record.

    Raises:
        UsageError: no SLURM for ``--launcher slurm``; ConfigError: a profile submitit rejects.
    """
    t0 = time.perf_counter()
    launcher = resolve_launcher(launcher)
    say = progress or (lambda msg: log.info("%s", msg))
    options = _absolute(options)
    out = Path(options.out_dir)
    done, groups = plan(configs, out)
    report = SweepReport(grid.name, launcher, [c.run_id for c in configs], skipped=done)
    pending = sum(len(g) for g in groups.values())
    say(f"sweep {grid.name}: {len(configs)} runs, {len(done)} already recorded, {pending} to run "
        f"in {len(groups)} feature group(s), launcher {launcher}")
    if not groups:
        report.seconds = time.perf_counter() - t0
        return report
    log_dir = Path(log_dir or default_log_dir(out, grid)).resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    report.log_dir = log_dir
    profile = profile or Profile()
    if launcher == "inline":
        failures = _run_inline(groups, options, log_dir, say)
    else:
        if launcher == "slurm":
            units = _submit_slurm(grid, groups, options, profile, max_parallel, runs_per_task, log_dir, poll_s, say)
            _write_manifest(log_dir, grid, launcher, configs, units)
            if wait:
                _wait(units, poll_s, say)
        else:
            units = _run_local(grid, groups, options, profile, max_parallel, runs_per_task, log_dir, poll_s, say)
            _write_manifest(log_dir, grid, launcher, configs, units)
        report.jobs = {str(u.job.job_id): u.run_ids or [str(u.stage)] for u in units}
        if not wait and launcher == "slurm":
            report.submitted_only = True
            report.seconds = time.perf_counter() - t0
            return report
        failures = _failures(units, groups)
    for stage, runs in groups.items():
        for c in runs:
            if has_record(out, c.run_id):
                report.finished.append(c.run_id)
            else:
                error, log_path = failures.get(c.run_id, ("no record was written", None))
                report.failed.append(Failure(c.run_id, error, log_path))
    report.seconds = time.perf_counter() - t0
    return report


def _absolute(options: "RunOptions") -> "RunOptions":
    from eebench import paths
    from eebench.runner import RunOptions

    def ab(p: Path | None) -> Path | None:
        return Path(p).expanduser().resolve() if p is not None else None

    return RunOptions(data_dir=ab(paths.data_dir(options.data_dir)),
                      weights_dir=ab(paths.weights_dir(options.weights_dir)),
                      cache_dir=ab(paths.cache_dir(options.cache_dir)),
                      out_dir=ab(options.out_dir) or Path("runs").resolve(),
                      batch_size=options.batch_size, num_workers=options.num_workers)


def _run_inline(groups: dict[FeatureStage, list[RunConfig]], options: RunOptions, log_dir: Path,
                say: Callable[[str], None]) -> dict[str, tuple[str, Path | None]]:
    """Features, then runs, in this process; a failure's traceback goes to ``log_dir/<id>.log``."""
    failures: dict[str, tuple[str, Path | None]] = {}
    n_total, n_done = sum(len(r) for r in groups.values()), 0
    for i, (stage, runs) in enumerate(groups.items()):
        try:
            FeatureTask(options)(stage)
        except Exception as e:  # the stage's runs fail, the other stages go on
            path = log_dir / f"features-{i}-{stage.dataset}-{stage.backbone}.log"
            path.write_text(traceback.format_exc())
            for c in runs:
                failures[c.run_id] = (f"feature stage {stage} failed: {type(e).__name__}: {_one_line(str(e))}", path)
            say(f"features of {stage} failed: {type(e).__name__}: {_one_line(str(e))} (log {path})")
            continue
        for c in runs:
            try:
                run_once(c, options)
            except Exception as e:  # one failing run never cancels the others
                path = log_dir / f"{c.run_id}.log"
                path.write_text(traceback.format_exc())
                failures[c.run_id] = (f"{type(e).__name__}: {_one_line(str(e))}", path)
            n_done += 1
            say(f"runs {n_done}/{n_total} ({len(failures)} failed)")
    return failures


def _executor(launcher: str, log_dir: Path, profile: Profile, stage: str, name: str):
    init = {k: v for k, v in profile.init.items() if k.startswith(f"{launcher}_")}
    executor = submitit.AutoExecutor(folder=log_dir / "%j", cluster=launcher, **init)
    try:
        executor.update_parameters(name=f"eebench-{name}-{stage}", **profile.stage(stage))
    except (NameError, ValueError, AssertionError, TypeError) as e:
        raise ConfigError(f"profile {profile.path} ({stage}): submitit rejects it: {_one_line(str(e))}") from None
    return executor


def _submit_slurm(grid: Grid, groups: dict[FeatureStage, list[RunConfig]], options: RunOptions, profile: Profile,
                  max_parallel: int | None, runs_per_task: int, log_dir: Path, poll_s: float,
                  say: Callable[[str], None]) -> list[_Unit]:
    """Feature jobs as one array; per feature group, the run chunks as arrays that depend on it."""
    stages = list(groups)
    feat_ex = _executor("slurm", log_dir, profile, "features", grid.name)
    if max_parallel:
        feat_ex.update_parameters(slurm_array_parallelism=int(max_parallel))
    feat_jobs = feat_ex.map_array(FeatureTask(options), stages)
    units = [_Unit(j, "features", s, []) for j, s in zip(feat_jobs, stages)]
    say(f"submitted {len(feat_jobs)} feature job(s): {', '.join(str(j.job_id) for j in feat_jobs)}")
    extra = dict(profile.stage("runs").get("slurm_additional_parameters") or {})
    for stage, fjob in zip(stages, feat_jobs):
        run_ex = _executor("slurm", log_dir, profile, "runs", grid.name)
        if max_parallel:
            run_ex.update_parameters(slurm_array_parallelism=int(max_parallel))
        run_ex.update_parameters(slurm_dependency=f"afterok:{fjob.job_id}",
                                 slurm_additional_parameters={**extra, "kill_on_invalid_dep": "yes"})
        for batch in _chunks(_chunks(groups[stage], runs_per_task), MAX_ARRAY):
            try:
                jobs = run_ex.map_array(RunTask(options), [[RunTask.item(c) for c in chunk] for chunk in batch])
            except Exception as e:  # noqa: BLE001 - e.g. the feature job already failed: sbatch refuses the dependency
                say(f"submitting runs of {stage} after job {fjob.job_id} failed ({_one_line(str(e))}); "
                    f"waiting for that job")
                while not fjob.done():
                    time.sleep(poll_s)
                if not _job_outcome(fjob)[0]:
                    continue            # reported as the feature stage's failure
                run_ex = _executor("slurm", log_dir, profile, "runs", grid.name)   # no dependency now
                if max_parallel:
                    run_ex.update_parameters(slurm_array_parallelism=int(max_parallel))
                jobs = run_ex.map_array(RunTask(options), [[RunTask.item(c) for c in chunk] for chunk in batch])
            units += [_Unit(j, "runs", stage, [c.run_id for c in chunk]) for j, chunk in zip(jobs, batch)]
            ids = sorted({str(j.job_id).split("_")[0] for j in jobs})
            say(f"submitted {len(jobs)} run task(s) of {stage} as array {', '.join(ids)} (after job {fjob.job_id})")
    return units


def _run_local(grid: Grid, groups: dict[FeatureStage, list[RunConfig]], options: RunOptions, profile: Profile,
                  max_parallel: int | None, runs_per_task: int, log_dir: Path, poll_s: float,
                  say: Callable[[str], None]) -> list[_Unit]:
    """submitit's local executor: at most ``max_parallel`` subprocesses; a group's runs start when
    its feature job has finished (a first wave), and are failed with it when it fails."""
    cpus = os.cpu_count() or 1
    parallel = int(max_parallel or max(1, cpus // 2))
    threads = max(1, cpus // parallel)
    feat_ex = _executor("local", log_dir, profile, "features", grid.name)
    run_ex = _executor("local", log_dir, profile, "runs", grid.name)
    queue: list[tuple[str, FeatureStage, list[RunConfig]]] = [("features", s, []) for s in groups]
    running: list[_Unit] = []
    units: list[_Unit] = []
    n_runs, last = sum(len(r) for r in groups.values()), ""
    while queue or running:
        while queue and len(running) < parallel:
            kind, stage, chunk = queue.pop(0)
            if kind == "features":
                job = feat_ex.submit(FeatureTask(options, threads), stage)
            else:
                job = run_ex.submit(RunTask(options, threads), [RunTask.item(c) for c in chunk])
            unit = _Unit(job, kind, stage, [c.run_id for c in chunk])
            running.append(unit)
            units.append(unit)
        time.sleep(poll_s if running else 0)
        for unit in [u for u in running if u.job.done()]:
            running.remove(unit)
            unit.outcome = _job_outcome(unit.job)
            if unit.kind == "features":
                if unit.outcome[0]:
                    queue += [("runs", unit.stage, chunk) for chunk in _chunks(groups[unit.stage], runs_per_task)]
                else:
                    say(f"features of {unit.stage} failed: {unit.outcome[1]} (log {_job_log(unit.job)})")
        msg = _progress(units, n_runs)
        if msg != last:
            say(msg)
            last = msg
    return units


def _progress(units: list[_Unit], n_runs: int) -> str:
    feats = [u for u in units if u.kind == "features"]
    runs = [u for u in units if u.kind == "runs"]
    f_done = sum(u.outcome is not None for u in feats)
    r_done = sum(len(u.run_ids) for u in runs if u.outcome is not None)
    r_fail = sum(len(u.run_ids) for u in runs if u.outcome is not None and not u.outcome[0])
    return f"features {f_done}/{len(feats)}; run tasks done {r_done}/{n_runs} runs ({r_fail} in failed tasks)"


def _wait(units: list[_Unit], poll_s: float, say: Callable[[str], None], force_every_s: float = 15.0) -> None:
    """Poll until every job is done (result file, or a final state from ``sacct``), with progress."""
    n_runs = sum(len(u.run_ids) for u in units)
    last_msg, last_force = "", time.monotonic()
    while True:
        force = time.monotonic() - last_force > force_every_s
        if force:
            last_force = time.monotonic()
        for u in units:
            if u.outcome is None and u.job.done(force_check=force):
                u.outcome = _job_outcome(u.job)
                force = False              # one forced sacct call refreshes every job
        msg = _progress(units, n_runs)
        if msg != last_msg:
            say(msg)
            last_msg = msg
        if all(u.outcome is not None for u in units):
            return
        time.sleep(poll_s)


def _failures(units: list[_Unit], groups: dict[FeatureStage, list[RunConfig]]
              ) -> dict[str, tuple[str, Path | None]]:
    """run id → (error, log) for the runs of failed jobs; every run of a feature stage whose job
    failed (submitted or not) gets that job's error and log."""
    out: dict[str, tuple[str, Path | None]] = {}
    for u in units:
        if u.kind == "features":
            ok, error = u.outcome or _job_outcome(u.job)
            if not ok:
                for c in groups.get(u.stage, []):
                    out[c.run_id] = (f"feature stage {u.stage} failed: {error}", _job_log(u.job))
    for u in units:
        if u.kind != "runs":
            continue
        ok, error = u.outcome or _job_outcome(u.job)
        if ok:
            continue
        errors = _run_errors(error)
        for run_id in u.run_ids:
            out.setdefault(run_id, (errors.get(run_id, error), _job_log(u.job)))
    return out


def _write_manifest(log_dir: Path, grid: Grid, launcher: str, configs: list[RunConfig], units: list[_Unit]) -> None:
    from eebench.records import write_json

    write_json(log_dir / "sweep.json", {
        "grid": grid.name, "grid_file": str(grid.path) if grid.path else None, "launcher": launcher,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "runs": [c.run_id for c in configs],
        "jobs": [{"job_id": str(u.job.job_id), "kind": u.kind, "stage": str(u.stage), "runs": u.run_ids,
                  "log": str(_job_log(u.job))} for u in units],
    })


# ---------------------------------------------------------------------------------------------
# collect


def collect(configs: list[RunConfig], out_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The complete records of a grid's runs, and the run ids that have none.

    Only ``record.json`` files are read; they are written last and atomically, so a run in
    progress is never half-read.
    """
    records, missing = [], []
    for c in configs:
        record = read_record(out_dir, c.run_id)
        if record is None:
            missing.append(c.run_id)
        else:
            records.append(record)
    return records, missing


def summary_rows(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run: method, dataset, backbone, seed, swept parameters, the backbone's test
    accuracy, the number of operating points, the best test accuracy (%) with its normalised
    cost, and the cheapest point's cost."""
    rows = []
    for r in records:
        cfg, points = r["config"], r.get("operating_points") or []
        best = max(points, key=lambda p: p["accuracy"]) if points else None
        rows.append({"run_id": r["run_id"], "method": cfg["method"], "dataset": cfg["dataset"],
                     "backbone": cfg["backbone"], "seed": cfg["seed"],
                     "backbone_acc": 100 * r["backbone_accuracy"], "points": len(points),
                     "best_acc": 100 * best["accuracy"] if best else float("nan"),
                     "cost_at_best": best["cost"] if best else float("nan"),
                     "min_cost": min(p["cost"] for p in points) if points else float("nan")})
    return rows
