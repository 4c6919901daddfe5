"""What a sweep's jobs execute: building one feature cache (:class:`FeatureTask`) and a chunk of
runs (:class:`RunTask`), each a :class:`submitit.helpers.Checkpointable`.

How the stages are ordered and launched: :mod:`eebench.sweep.launchers`.

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

A failure is written where it happens, as a small file (``OUT/.failures/<run id or stage>.json``,
:func:`eebench.records.write_failure`), which the launcher reads back; nothing is parsed from
exception text.
"""
from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import submitit
from submitit.helpers import Checkpointable

from eebench.harness.config import RunConfig
from eebench.errors import UsageError
from eebench.records import clear_failure, has_record, write_failure

if TYPE_CHECKING:   # eebench.harness.runner imports torch: a job imports it only once its signal handlers are set
    from eebench.harness.runner import RunOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureStage:
    """One feature cache: a (dataset, backbone, weights, dataset parameters) that runs share."""

    dataset: str
    backbone: str
    dataset_params: tuple[tuple[str, Any], ...]
    weights: str = "auto"
    recipe_json: str = "{}"
    backbone_json: str = "{}"

    @property
    def key(self) -> str:
        """A file-name key of the stage (its failure file)."""
        return "features-" + hashlib.sha256(repr(self).encode()).hexdigest()[:12]

    @staticmethod
    def of(config: RunConfig) -> "FeatureStage":
        params = tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in config.dataset_params.items()))
        return FeatureStage(config.dataset, config.backbone, params, getattr(config, "weights", "auto"),
                            json.dumps(getattr(config, "recipe", {}), sort_keys=True),
                            json.dumps(getattr(config, "backbone_params", {}), sort_keys=True))

    def params(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.dataset_params}

    def recipe(self) -> dict[str, Any]:
        return json.loads(self.recipe_json)

    def backbone_params(self) -> dict[str, Any]:
        return json.loads(self.backbone_json)

    def __str__(self) -> str:
        return f"{self.dataset}/{self.backbone}"


def _job_setup(threads: int | None) -> None:
    """Logging to the job's log file, and torch's thread count: ``threads`` (the local launcher's
    share of the CPUs), else ``--threads`` / ``$EEBENCH_THREADS`` of the submitting command, else the
    CPUs the job may use (its affinity, cgroup quota and ``SLURM_CPUS_PER_TASK``: :mod:`eebench.harness.threads`)."""
    from eebench.harness.threads import resolve_threads, set_threads

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    set_threads(threads or resolve_threads()[0])


def _options_state(options: "RunOptions | dict[str, Any]") -> dict[str, Any]:
    """RunOptions as plain data: unpickling a task must not import torch (a SIGUSR2 that arrives
    before submitit has installed its handler would kill the job instead of requeueing it)."""
    if isinstance(options, dict):
        return dict(options)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(options).items()}


def _run_options(state: dict[str, Any]) -> "RunOptions":
    from eebench.harness.runner import RunOptions

    paths_ = ("data_dir", "weights_dir", "cache_dir", "out_dir")
    return RunOptions(**{k: (Path(v) if k in paths_ and v is not None else v) for k, v in state.items()})


class FeatureTask(Checkpointable):
    """Build (or find) one feature cache, the first stage of a sweep.

    Calls :func:`eebench.harness.runner.prepare_features`, which holds the cache's file lock while
    building, so concurrent jobs wait for one build. Requeued on time-out/pre-emption by
    submitit and simply called again (a backbone trained on first use resumes from its epoch
    checkpoint).

    Returns:
        ``{"key": cache key, "reused": bool}``.

    Raises:
        whatever the feature pass raises, after writing the stage's failure file.
    """

    def __init__(self, options: "RunOptions | dict[str, Any]", threads: int | None = None):
        self.options = _options_state(options)
        self.threads = threads

    def __call__(self, stage: FeatureStage) -> dict[str, Any]:
        _job_setup(self.threads)
        from eebench.harness.runner import prepare_features

        log.info("features of %s %s", stage, stage.params())
        options = _run_options(self.options)
        clear_failure(options.out_dir, stage.key)
        try:
            prep = prepare_features(stage.dataset, stage.backbone, stage.params(), options, weights=stage.weights,
                                    recipe=stage.recipe(), backbone_params=stage.backbone_params())
        except Exception as e:
            write_failure(options.out_dir, stage.key, error_line(e))
            raise
        return {"key": prep.key, "reused": prep.reused}


class RunFailedError(RuntimeError):
    """Runs of a run task failed (the others of the task finished); each failure is in its
    failure file (:func:`eebench.records.write_failure`)."""


def run_once(config: RunConfig, options: RunOptions) -> str:
    """Run one configuration unless its record exists; never twice at once.

    The check and the run happen under ``OUT/.locks/<run-id>.lock``: a second task given the same
    run (a resubmitted sweep while the first is still running) waits, then finds the record.
    Temporary files a killed attempt left in the run's folder are removed first.

    With ``options.latency`` (a grid's ``latency:``), the run is then timed (:func:`eebench.deploy.latency.measure`),
    and a recorded run without its ``latency.json`` is timed without being run again.

    Returns:
        "skipped" (the record, and the timing asked for, existed) or "done".

    Raises:
        whatever :func:`eebench.harness.runner.run` raises; nothing but the run's failure file
        (:func:`eebench.records.write_failure`) is written then.
    """
    from filelock import FileLock

    from eebench.harness.runner import run

    out = Path(options.out_dir)
    latency = getattr(options, "latency", None)
    if has_record(out, config.run_id, latency is not None):
        return "skipped"
    locks = out / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    with FileLock(str(locks / f"{config.run_id}.lock")):
        if has_record(out, config.run_id, latency is not None):
            return "skipped"
        for tmp in (out / config.run_id).glob(".*.*"):     # write_atomic's leftovers of a killed attempt
            tmp.unlink(missing_ok=True)
        clear_failure(out, config.run_id)
        t0 = time.perf_counter()
        try:
            if not has_record(out, config.run_id):
                run(config, options)
                log.info("run %s: record written in %.1f s", config.run_id, time.perf_counter() - t0)
            if latency is not None:
                from eebench.deploy.latency import LatencyOptions, measure

                measure(out / config.run_id, options, LatencyOptions(**latency))
                log.info("run %s: latency.json written", config.run_id)
        except Exception as e:
            write_failure(out, config.run_id, error_line(e))
            raise
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
        RunFailedError: after the whole chunk, if any run failed (each one's error in its failure
            file; the tracebacks in the task's log).
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
                write_failure(options.out_dir, run_id, error_line(e))
                failed.append(run_id)
        if failed:
            raise RunFailedError(f"{len(failed)} of {len(runs)} runs failed: {', '.join(failed)}")
        return outcomes

    def checkpoint(self, runs: list[dict[str, Any]]) -> Any:
        """The requeued task: the same runs minus those with a record (submitit API)."""
        left = [r for r in runs if not has_record(Path(self.options["out_dir"]), r["run_id"])]
        log.info("checkpoint: %d of %d runs of this task left; requeueing", len(left), len(runs))
        return submitit.helpers.DelayedSubmission(self, left)


def one_line(text: str) -> str:
    """The first non-empty line of ``text``."""
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[0] if lines else ""


def error_line(e: BaseException) -> str:
    """``<ExceptionType>: <first line of its message>``: how a failure is reported."""
    return f"{type(e).__name__}: {one_line(str(e))}"
