"""Launching a sweep's runs: inline (this process), locally (submitit's local executor) or on
SLURM (submitit job arrays), with executor profiles, and what a sweep reports.

Stages: the feature cache of each (dataset, backbone, weights, dataset parameters) is built once, by its
own job (:class:`FeatureTask`, through :func:`eebench.harness.runner.prepare_features`), before the runs
that read it (:class:`RunTask`, through :func:`eebench.harness.runner.run`). On SLURM the runs of a
feature group go out as one job array that depends on its feature job (``afterok``, with
``--kill-on-invalid-dep=yes`` so a failed feature job cancels its runs instead of leaving them
pending); with ``local`` (submitit's local executor, subprocesses on this machine) and ``inline``
(this process) the feature jobs form a first wave.

A run whose record exists is skipped (:func:`plan`); one failing run never cancels the others, and
the sweep ends by listing every run without a record with its error (read from the failure file
its job wrote) and log file.
"""
from __future__ import annotations

import logging
import shutil
import time
import traceback
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import submitit

from eebench.harness.config import RunConfig, parse_yaml
from eebench.harness.devices import pop_devices, stage_options
from eebench.harness.threads import resolve_threads
from eebench.errors import ConfigError, UsageError
from eebench.sweep.grids import Grid
from eebench.records import clear_failure, has_record, read_failure
from eebench.sweep.tasks import FeatureStage, FeatureTask, RunTask, one_line, run_once

if TYPE_CHECKING:
    from eebench.harness.runner import RunOptions

log = logging.getLogger(__name__)

LAUNCHERS = ("auto", "slurm", "local", "inline")
#: Stage-specific sections of a profile; every other key goes to submitit as it is.
PROFILE_STAGES = ("features", "runs")
#: Profile keys that are arguments of the executor's constructor, not of ``update_parameters``.
EXECUTOR_INIT_KEYS = ("slurm_max_num_timeout", "slurm_python", "local_max_num_timeout", "local_python")
#: Default time limit of a job (minutes) when the profile gives none (submitit's own is 5).
DEFAULT_TIMEOUT_MIN = 60
#: Slurm's default MaxArraySize is 1001: larger sets of tasks go out as several arrays.
MAX_ARRAY = 1000


@dataclass
class Profile:
    """Executor parameters from ``slurm/<name>.yaml``: ``common`` for every job, ``features`` and
    ``runs`` for one stage (merged over ``common``); ``init`` for the executor's constructor."""

    path: Path | None = None
    common: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    init: dict[str, Any] = field(default_factory=dict)
    devices: dict[str, str] = field(default_factory=dict)   # stage ("" for every stage) -> --device value

    def stage(self, name: str) -> dict[str, Any]:
        params = {**self.common, **self.stages.get(name, {})}
        params.setdefault("timeout_min", DEFAULT_TIMEOUT_MIN)
        return params

    def options(self, stage: str, options: "RunOptions") -> "RunOptions":
        return stage_options(options, self.devices, stage)


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
    profile = Profile(path, data, stages, init, pop_devices(data, stages, f"profile {path}"))
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:     # let submitit check every key, with no cluster needed
        for stage in PROFILE_STAGES:
            try:
                submitit.AutoExecutor(folder=tmp, cluster="debug").update_parameters(**profile.stage(stage))
            except (NameError, ValueError, AssertionError, TypeError) as e:
                raise ConfigError(f"profile {path} ({stage}): submitit rejects it: {one_line(str(e))}") from None
    return profile


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
        """A few lines: counts, then one line per distinct failure (its runs, error and log path)."""
        if self.submitted_only:
            head = (f"sweep {self.grid}: {len(self.runs)} runs, {len(self.skipped)} already recorded, "
                    f"{len(self.runs) - len(self.skipped)} submitted in {len(self.jobs)} jobs; "
                    f"logs {self.log_dir}")
            return head
        lines = [f"sweep {self.grid} ({self.launcher}): {len(self.runs)} runs: {len(self.skipped)} already recorded, "
                 f"{len(self.finished)} finished now, {len(self.failed)} failed ({self.seconds:.1f} s)"]
        if self.failed:
            lines.append("failed runs (no record written):")
            groups: dict[tuple[str, str], list[str]] = {}
            for f in self.failed:                     # a failed feature stage fails every run of its group
                groups.setdefault((f.error, str(f.log) if f.log else "(none)"), []).append(f.run_id)
            for (error, log_path), ids in groups.items():
                who = ids[0] if len(ids) == 1 else f"{len(ids)} runs ({', '.join(ids)})"
                lines.append(f"  {who}: {error}")
                lines.append(f"    log: {log_path}")
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
    except submitit.core.utils.FailedJobError:
        return False, f"job {job.job_id} failed"
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


def plan(configs: list[RunConfig], out_dir: Path, latency: bool = False
         ) -> tuple[list[str], dict[FeatureStage, list[RunConfig]]]:
    """A grid's runs split: those recorded (and timed, with ``latency``); the others by feature stage."""
    done, groups = [], {}
    for c in configs:
        if has_record(out_dir, c.run_id, latency):
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
    timed = options.latency is not None
    done, groups = plan(configs, out, timed)
    report = SweepReport(grid.name, launcher, [c.run_id for c in configs], skipped=done)
    pending = sum(len(g) for g in groups.values())
    say(f"sweep {grid.name}: {len(configs)} runs, {len(done)} already recorded, {pending} to run "
        f"in {len(groups)} feature group(s), launcher {launcher}")
    if not groups:
        report.seconds = time.perf_counter() - t0
        return report
    for stage, runs in groups.items():          # failures of earlier attempts are not this sweep's
        clear_failure(out, stage.key)
        for c in runs:
            clear_failure(out, c.run_id)
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
        failures = _failures(units, groups, out)
    for stage, runs in groups.items():
        for c in runs:
            if has_record(out, c.run_id, timed):
                report.finished.append(c.run_id)
            else:
                error, log_path = failures.get(c.run_id, ("no record was written", None))
                report.failed.append(Failure(c.run_id, error, log_path))
    report.seconds = time.perf_counter() - t0
    return report


def _absolute(options: "RunOptions") -> "RunOptions":
    from eebench import paths

    def ab(p: Path | None) -> Path | None:
        return Path(p).expanduser().resolve() if p is not None else None

    return replace(options, data_dir=ab(paths.data_dir(options.data_dir)),
                   weights_dir=ab(paths.weights_dir(options.weights_dir)),
                   cache_dir=ab(paths.cache_dir(options.cache_dir)),
                   out_dir=ab(options.out_dir) or Path("runs").resolve())


def _run_inline(groups: dict[FeatureStage, list[RunConfig]], options: RunOptions, log_dir: Path,
                say: Callable[[str], None]) -> dict[str, tuple[str, Path | None]]:
    """Features, then runs, in this process; a failure's traceback goes to ``log_dir/<id>.log``."""
    failures: dict[str, tuple[str, Path | None]] = {}
    out = Path(options.out_dir)
    n_total, n_done = sum(len(r) for r in groups.values()), 0
    for i, (stage, runs) in enumerate(groups.items()):
        try:
            FeatureTask(options)(stage)
        except Exception:  # the stage's runs fail, the other stages go on
            path = log_dir / f"features-{i}-{stage.dataset}-{stage.backbone}.log"
            path.write_text(traceback.format_exc())
            error = read_failure(out, stage.key)
            for c in runs:
                failures[c.run_id] = (f"feature stage {stage} failed: {error}", path)
            say(f"features of {stage} failed: {error} (log {path})")
            continue
        for c in runs:
            try:
                run_once(c, options)
            except Exception:  # one failing run never cancels the others
                path = log_dir / f"{c.run_id}.log"
                path.write_text(traceback.format_exc())
                failures[c.run_id] = (read_failure(out, c.run_id) or "failed", path)
            n_done += 1
            say(f"runs {n_done}/{n_total} ({len(failures)} failed)")
    return failures


def _executor(launcher: str, log_dir: Path, profile: Profile, stage: str, name: str):
    init = {k: v for k, v in profile.init.items() if k.startswith(f"{launcher}_")}
    executor = submitit.AutoExecutor(folder=log_dir / "%j", cluster=launcher, **init)
    try:
        executor.update_parameters(name=f"eebench-{name}-{stage}", **profile.stage(stage))
    except (NameError, ValueError, AssertionError, TypeError) as e:
        raise ConfigError(f"profile {profile.path} ({stage}): submitit rejects it: {one_line(str(e))}") from None
    return executor


def _submit_slurm(grid: Grid, groups: dict[FeatureStage, list[RunConfig]], options: RunOptions, profile: Profile,
                  max_parallel: int | None, runs_per_task: int, log_dir: Path, poll_s: float,
                  say: Callable[[str], None]) -> list[_Unit]:
    """Feature jobs as one array; per feature group, the run chunks as arrays that depend on it."""
    stages = list(groups)
    feat_ex = _executor("slurm", log_dir, profile, "features", grid.name)
    if max_parallel:
        feat_ex.update_parameters(slurm_array_parallelism=int(max_parallel))
    feat_jobs = feat_ex.map_array(FeatureTask(profile.options("features", options)), stages)
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
                jobs = run_ex.map_array(RunTask(profile.options("runs", options)),
                                        [[RunTask.item(c) for c in chunk] for chunk in batch])
            except Exception as e:  # noqa: BLE001 - e.g. the feature job already failed: sbatch refuses the dependency
                say(f"submitting runs of {stage} after job {fjob.job_id} failed ({one_line(str(e))}); "
                    f"waiting for that job")
                while not fjob.done():
                    time.sleep(poll_s)
                if not _job_outcome(fjob)[0]:
                    continue            # reported as the feature stage's failure
                run_ex = _executor("slurm", log_dir, profile, "runs", grid.name)   # no dependency now
                if max_parallel:
                    run_ex.update_parameters(slurm_array_parallelism=int(max_parallel))
                jobs = run_ex.map_array(RunTask(profile.options("runs", options)),
                                        [[RunTask.item(c) for c in chunk] for chunk in batch])
            units += [_Unit(j, "runs", stage, [c.run_id for c in chunk]) for j, chunk in zip(jobs, batch)]
            ids = sorted({str(j.job_id).split("_")[0] for j in jobs})
            say(f"submitted {len(jobs)} run task(s) of {stage} as array {', '.join(ids)} (after job {fjob.job_id})")
    return units


def _run_local(grid: Grid, groups: dict[FeatureStage, list[RunConfig]], options: RunOptions, profile: Profile,
                  max_parallel: int | None, runs_per_task: int, log_dir: Path, poll_s: float,
                  say: Callable[[str], None]) -> list[_Unit]:
    """submitit's local executor: at most ``max_parallel`` subprocesses; a group's runs start when
    its feature job has finished (a first wave), and are failed with it when it fails."""
    cpus = resolve_threads()[0]     # --threads / EEBENCH_THREADS, else the CPUs this process may use
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
                job = feat_ex.submit(FeatureTask(profile.options("features", options), threads), stage)
            else:
                job = run_ex.submit(RunTask(profile.options("runs", options), threads), [RunTask.item(c) for c in chunk])
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


def _failures(units: list[_Unit], groups: dict[FeatureStage, list[RunConfig]], out: Path
              ) -> dict[str, tuple[str, Path | None]]:
    """run id → (error, log) for the runs of failed jobs, read from the failure files the jobs wrote
    (:func:`eebench.records.write_failure`); every run of a feature stage whose job failed gets that
    stage's error, and a job that died without writing one (killed, out of memory) its state."""
    out_map: dict[str, tuple[str, Path | None]] = {}
    for u in units:
        if u.kind == "features":
            ok, state = u.outcome or _job_outcome(u.job)
            if not ok:
                error = read_failure(out, u.stage.key) or state
                for c in groups.get(u.stage, []):
                    out_map[c.run_id] = (f"feature stage {u.stage} failed: {error}", _job_log(u.job))
    for u in units:
        if u.kind != "runs":
            continue
        ok, state = u.outcome or _job_outcome(u.job)
        if ok:
            continue
        for run_id in u.run_ids:
            out_map.setdefault(run_id, (read_failure(out, run_id) or state, _job_log(u.job)))
    return out_map


def _write_manifest(log_dir: Path, grid: Grid, launcher: str, configs: list[RunConfig], units: list[_Unit]) -> None:
    from eebench.records import write_json

    write_json(log_dir / "sweep.json", {
        "grid": grid.name, "grid_file": str(grid.path) if grid.path else None, "launcher": launcher,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "runs": [c.run_id for c in configs],
        "jobs": [{"job_id": str(u.job.job_id), "kind": u.kind, "stage": str(u.stage), "runs": u.run_ids,
                  "log": str(_job_log(u.job))} for u in units],
    })

