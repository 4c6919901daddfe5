"""Sweeps on a real SLURM cluster (the one-machine loopback cluster of
``slurm/start-local-cluster.sh``, which ``.ci/run`` starts): a grid as a job array, a cancelled and
resubmitted sweep, a failing run, and a run timed out, requeued by submitit and finished.

Every test submits through the CLI (``eebench sweep``) with a fresh output folder, a fresh submitit
folder and a grid name of its own (job names ``eebench-<name>-features|runs``, so ``scancel
--name`` touches nothing else). All share the session's feature cache: the digits ViT trains once.
"""
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from filelock import FileLock

from eebench.sweep.grids import expand, load_grid
from conftest import SMOKE, check_record

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(900),
              pytest.mark.skipif(shutil.which("sinfo") is None,
                                 reason="no SLURM client (sinfo) on PATH: start the one-machine cluster with "
                                        "slurm/start-local-cluster.sh (.ci/run does) to run these tests")]

EEBENCH = Path(sys.executable).parent / "eebench"


@pytest.fixture(scope="module")
def partition() -> str:
    """The cluster's default partition; the cluster must answer (CI started it)."""
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    if "UP" not in ping.stdout:
        pytest.fail(f"sinfo is on PATH but slurmctld does not answer ({ping.stdout.strip()} {ping.stderr.strip()}); "
                    f"start the cluster: slurm/start-local-cluster.sh")
    parts = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, check=True).stdout.split()
    return next((p.rstrip("*") for p in parts if p.endswith("*")), parts[0])


def _profile(tmp_path: Path, partition: str, **extra) -> Path:
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump({"slurm_partition": partition, "timeout_min": 10, "cpus_per_task": 1, **extra}))
    return path


def _env(session_cache: Path) -> dict:
    return {**os.environ, "EEBENCH_CACHE_DIR": str(session_cache), "TQDM_DISABLE": "1"}


def _sweep_args(grid: Path, name: str, profile: Path, out: Path, logs: Path, *extra: str) -> list[str]:
    return [str(EEBENCH), "sweep", str(grid), "--launcher", "slurm", "--set", f"name={name}", "--profile", str(profile),
            "--out", str(out), "--log-dir", str(logs), *extra]


def _records(out: Path) -> dict[str, tuple[bytes, int]]:
    return {p.parent.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.glob("*/record.json")}


def _sacct(job_id: str, fields: str = "JobID,State", duplicates: bool = False) -> list[list[str]]:
    cmd = ["sacct", "-n", "-X", "-P", "-j", job_id, "-o", fields] + (["-D"] if duplicates else [])
    lines = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()
    return [ln.split("|") for ln in lines if ln.strip()]


def _sacct_settled(job_id: str, fields: str, timeout: float = 60, duplicates: bool = False) -> list[list[str]]:
    """``_sacct`` once no task is PENDING, RUNNING or COMPLETING (or after ``timeout`` s): a task's
    result file (what submitit waits for) is written a moment before Slurm's accounting marks the
    task finished."""
    end = time.monotonic() + timeout
    while True:
        rows = _sacct(job_id, fields, duplicates)
        if not any(r[1] in ("RUNNING", "COMPLETING", "PENDING") for r in rows) or time.monotonic() > end:
            return rows
        time.sleep(0.5)


def _squeue(name: str) -> list[list[str]]:
    out = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i|%T|%r"], capture_output=True, text=True).stdout
    return [ln.split("|") for ln in out.splitlines() if ln.strip()]


def _wait_gone(name: str, timeout: float = 60) -> None:
    """Until no job of that name is left in the queue (running ones finish their kill)."""
    end = time.monotonic() + timeout
    while _squeue(name) and time.monotonic() < end:
        time.sleep(0.5)


def _one_record_per_run(out: Path, run_ids: set[str]) -> None:
    dirs = {p.name for p in out.iterdir() if not p.name.startswith(("_", "."))}
    assert dirs == run_ids
    for run_id in run_ids:
        assert sorted(p.name for p in (out / run_id).iterdir()) == ["exits.safetensors", "record.json", "samples.npz"]


def test_grid_runs_as_a_job_array(tmp_path, partition, session_cache):
    """Acceptance 1: the 12-run smoke grid (2 methods x 2 settings x 3 seeds) goes out as one
    feature job and one job array after it; every run id gets one record with real metrics."""
    name = f"array-{uuid.uuid4().hex[:6]}"
    out, logs = tmp_path / "runs", tmp_path / "logs"
    proc = subprocess.run(_sweep_args(SMOKE, name, _profile(tmp_path, partition), out, logs),
                          env=_env(session_cache), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"sweep {name} (slurm): 12 runs: 0 already recorded, 12 finished now, 0 failed" in proc.stdout
    run_ids = {c.run_id for c in expand(load_grid(SMOKE))}
    _one_record_per_run(out, run_ids)
    for run_id in run_ids:
        record = json.loads((out / run_id / "record.json").read_text())
        check_record(record)
        assert record["features"]["reused"] is True          # the feature job built the cache first
    manifest = json.loads((logs / "sweep.json").read_text())
    feature = [j for j in manifest["jobs"] if j["kind"] == "features"]
    runs = [j for j in manifest["jobs"] if j["kind"] == "runs"]
    assert len(feature) == 1 and len(runs) == 12
    arrays = {j["job_id"].split("_")[0] for j in runs}
    assert len(arrays) == 1 and sorted(int(j["job_id"].split("_")[1]) for j in runs) == list(range(12))
    tasks = _sacct_settled(arrays.pop(), "JobID,State,Start")
    assert len(tasks) == 12 and {t[1] for t in tasks} == {"COMPLETED"}
    (_, f_state, f_end), = _sacct(feature[0]["job_id"], "JobID,State,End")
    assert f_state == "COMPLETED" and min(t[2] for t in tasks) >= f_end   # afterok: runs start after it


def test_cancelled_sweep_resumes_without_rerunning_finished_runs(tmp_path, partition, session_cache):
    """Acceptance 2: scancel half-way, resubmit the same grid (the smoke grid's 6 threshold runs):
    one record per run id, and the runs that had finished keep their records byte for byte."""
    name = f"resume-{uuid.uuid4().hex[:6]}"
    out, profile = tmp_path / "runs", _profile(tmp_path, partition)
    only = ("--set", "methods.jei=null")
    first = subprocess.Popen(_sweep_args(SMOKE, name, profile, out, tmp_path / "logs1", *only, "--max-parallel", "2"),
                             env=_env(session_cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + 600
    while len(_records(out)) < 2:
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < end, "no run finished in 600 s"
        time.sleep(0.2)
    subprocess.run(["scancel", "--name", f"eebench-{name}-runs"], check=True)
    stdout, stderr = first.communicate(timeout=300)
    _wait_gone(f"eebench-{name}-runs")
    assert first.returncode == 1, stdout + stderr
    assert "CANCELLED" in stdout and "failed runs (no record written):" in stdout
    finished = _records(out)
    assert 2 <= len(finished) < 6, "the sweep was not cancelled half-way"

    proc = subprocess.run(_sweep_args(SMOKE, name, profile, out, tmp_path / "logs2", *only),
                          env=_env(session_cache), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    n = len(finished)
    assert f"6 runs: {n} already recorded, {6 - n} finished now, 0 failed" in proc.stdout
    run_ids = {c.run_id for c in expand(load_grid(SMOKE, ["methods.jei=null"]))}
    _one_record_per_run(out, run_ids)                        # no duplicate, no temporary file left
    after = _records(out)
    assert {k: after[k] for k in finished} == finished       # finished runs were not rerun
    manifest = json.loads((tmp_path / "logs2" / "sweep.json").read_text())
    assert sorted(r for j in manifest["jobs"] for r in j["runs"]) == sorted(run_ids - set(finished))


def test_failing_run_is_reported_and_the_others_finish(tmp_path, partition, session_cache):
    """Acceptance 3: one run with a parameter its method rejects fails alone; the sweep lists it
    with the log holding its traceback and exits 1."""
    grid = tmp_path / "fail.yaml"
    grid.write_text("datasets: [digits]\nseeds: [0]\ntest_parameters: true\n"
                    "methods:\n  threshold: {}\n  jei: {im_loss: weighted}\n  eenet: {budgets: [[0.01]]}\n")
    name = f"fail-{uuid.uuid4().hex[:6]}"
    out = tmp_path / "runs"
    proc = subprocess.run(_sweep_args(grid, name, _profile(tmp_path, partition), out, tmp_path / "logs"),
                          env=_env(session_cache), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"sweep {name} (slurm): 3 runs: 0 already recorded, 2 finished now, 1 failed" in proc.stdout
    configs = expand(load_grid(grid))
    bad = next(c.run_id for c in configs if c.method == "eenet")     # a budget below the first exit's cost
    lines = proc.stdout.splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith(f"  {bad}: ConfigError: method.budgets=[0.01]: each "
                                                               f"budget must lie in"))
    log = Path(lines[i + 1].split("log: ", 1)[1])
    assert log.name.endswith("_0_log.err") and log.is_relative_to(tmp_path / "logs")
    assert "Traceback" in log.read_text() and "each budget must lie in" in log.read_text()
    assert not (out / bad).exists()
    for c in configs:
        if c.run_id != bad:
            check_record(json.loads((out / c.run_id / "record.json").read_text()))
    manifest = json.loads((tmp_path / "logs" / "sweep.json").read_text())
    states = {j["runs"][0]: _sacct_settled(j["job_id"], "JobID,State")[0][1]
              for j in manifest["jobs"] if j["kind"] == "runs"}
    assert states.pop(bad) == "FAILED" and set(states.values()) == {"COMPLETED"}


def test_failed_feature_job_cancels_its_run_array(tmp_path, partition, session_cache):
    """The run array waits on its feature job (afterok); when that job fails, Slurm cancels the
    array (--kill-on-invalid-dep) instead of leaving it pending, and the sweep reports every run
    with the feature job's error and log."""
    grid = tmp_path / "nofeatures.yaml"
    grid.write_text("datasets: [digits]\nweights: published\nseeds: [0, 1]\ntest_parameters: true\n"
                    "methods: [threshold]\n")
    name = f"nofeat-{uuid.uuid4().hex[:6]}"
    logs = tmp_path / "logs"
    proc = subprocess.run(_sweep_args(grid, name, _profile(tmp_path, partition), tmp_path / "runs", logs),
                          env=_env(session_cache), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "2 runs: 0 already recorded, 0 finished now, 2 failed" in proc.stdout
    assert proc.stdout.count("feature stage digits/vit_digits failed: UsageError: vit_digits has no published") == 1
    assert "  2 runs (" in proc.stdout
    manifest = json.loads((logs / "sweep.json").read_text())
    feature = next(j for j in manifest["jobs"] if j["kind"] == "features")
    assert f"log: {feature['log']}" in proc.stdout and "Traceback" in Path(feature["log"]).read_text()
    assert _sacct_settled(feature["job_id"], "JobID,State")[0][1] == "FAILED"
    arrays = {j["job_id"].split("_")[0] for j in manifest["jobs"] if j["kind"] == "runs"}
    assert {row[1].split()[0] for a in arrays for row in _sacct_settled(a, "JobID,State")} == {"CANCELLED"}
    assert not list((tmp_path / "runs").glob("*/record.json"))


def test_timed_out_run_task_is_requeued_and_finishes(tmp_path, partition, session_cache):
    """Acceptance 4: a run task under a 2-minute limit gets Slurm's time-limit signal (SIGUSR2,
    60 s before the limit; Slurm checks every 30 s, so 30-60 s into the job), submitit
    checkpoints it and requeues it with its unfinished runs; the requeued task (started at once
    with ``scontrol update StartTime=now``) finishes them and the runs done before are kept.

    The task's last run is kept waiting on its run lock by this test (as a still-running duplicate
    would), so the limit is reached whatever the machine's speed; the lock is released once the
    task is requeued. The requeued job gets a 10-minute limit so it cannot time out again."""
    grid = tmp_path / "timeout.yaml"
    grid.write_text("datasets: [digits]\nseeds: [0, 1, 2]\ntest_parameters: true\nmethods: {threshold: {}}\n")
    name = f"timeout-{uuid.uuid4().hex[:6]}"
    out, logs = tmp_path / "runs", tmp_path / "logs"
    profile = _profile(tmp_path, partition, slurm_max_num_timeout=2,
                       features={"timeout_min": 30}, runs={"timeout_min": 2, "slurm_signal_delay_s": 60})
    run_ids = [c.run_id for c in expand(load_grid(grid))]
    held = FileLock(str(out / ".locks" / f"{run_ids[-1]}.lock"))
    (out / ".locks").mkdir(parents=True)
    held.acquire()
    proc = subprocess.Popen(_sweep_args(grid, name, profile, out, logs, "--runs-per-task", "3"),
                            env=_env(session_cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 420
        job = None
        while True:                                          # until the task is back in the queue, requeued
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < end, "the run task was not requeued within 420 s"
            queued = _squeue(f"eebench-{name}-runs")
            if queued:
                job = queued[0][0]
            if queued and queued[0][1] == "PENDING" and queued[0][2] == "BeginTime":
                break
            time.sleep(0.5)
        before = _records(out)
        subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now", "TimeLimit=10"], check=True)
    finally:
        held.release()
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stdout + stderr
    assert f"sweep {name} (slurm): 3 runs: 0 already recorded, 3 finished now, 0 failed" in stdout
    _one_record_per_run(out, set(run_ids))
    after = _records(out)
    assert {k: after[k] for k in before} == before          # runs done before the time-out were kept
    log = (logs / job / f"{job}_0_log.err").read_text() + (logs / job / f"{job}_0_log.out").read_text()
    assert "this job is timed-out" in log and f"Requeued job {job}" in log
    assert f"checkpoint: {3 - len(before)} of 3 runs of this task left" in log
    states = [s for _, s in _sacct_settled(job, "JobID,State", duplicates=True)]
    assert states[0] == "REQUEUED" and states[-1] == "COMPLETED"
