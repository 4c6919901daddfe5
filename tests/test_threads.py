"""Threads from the CPUs this process may use (:mod:`eebench.harness.threads`): affinity, cgroup quota and
SLURM, the fewest wins; ``--threads`` / ``$EEBENCH_THREADS`` override; bad counts are one line and
status 2; the run record says how many threads ran."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from conftest import read_record
from eebench.harness import threads


def test_cgroup_quota_v2_and_v1(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads.cgroup_cpu_quota(tmp_path) == 2                 # 1.5 CPUs, rounded up
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_cpu_quota(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cgroup_cpu_quota(tmp_path) == 3
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert threads.cgroup_cpu_quota(tmp_path) is None
    assert threads.cgroup_cpu_quota(tmp_path / "absent") is None


def test_the_fewest_cpus_win_and_the_user_overrides(monkeypatch):
    affinity = len(os.sched_getaffinity(0))
    monkeypatch.delenv("EEBENCH_THREADS", raising=False)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert threads.cpu_limits()["affinity"] == affinity
    assert threads.resolve_threads() == (threads.available_cpus(), "available CPUs")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert threads.available_cpus() == 1 and threads.cpu_limits()["SLURM_CPUS_PER_TASK"] == 1
    monkeypatch.setenv("EEBENCH_THREADS", "3")
    assert threads.resolve_threads() == (3, "EEBENCH_THREADS")
    assert threads.resolve_threads("2") == (2, "--threads")
    assert threads.data_workers(2) == 1 and threads.data_workers(8) == 7


def test_affinity_of_a_pinned_process():
    """A process pinned to one CPU (taskset / a SLURM binding) sizes its pool to one thread."""
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from eebench.harness import threads; print(threads.available_cpus())")
    env = {k: v for k, v in os.environ.items() if k not in ("EEBENCH_THREADS", "SLURM_CPUS_PER_TASK")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "1"


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "two"])
def test_a_bad_count_is_one_line_and_status_2(cli, tmp_path, value):
    status, _, err = cli("run", "--method", "threshold", "--threads", value, "--out", tmp_path)
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert f"--threads {value}: expected a whole number of threads >= 1" in err
    assert not list(tmp_path.iterdir())


def test_the_record_says_how_many_threads_ran(cli, tmp_path, monkeypatch):
    monkeypatch.delenv("EEBENCH_THREADS", raising=False)
    assert cli("run", "--method", "threshold", "--out", tmp_path / "default")[0] == 0
    assert read_record(tmp_path / "default")["torch_threads"] == {"backbone pass": threads.available_cpus(), "fits": 1}
    before = torch.get_num_threads()
    try:
        status, _, err = cli("run", "--method", "threshold", "--threads", "1", "--out", tmp_path / "one")
        assert status == 0, err
        assert read_record(tmp_path / "one")["torch_threads"] == {"backbone pass": 1, "fits": 1}
    finally:
        torch.set_num_threads(before)
        os.environ.pop("EEBENCH_THREADS", None)
