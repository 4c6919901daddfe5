"""How many CPU threads torch's intra-op pool uses: for the backbone pass (and backbone training),
the CPUs this process may use; for the fits (the shared IM stage, a method's fit, prediction and
metrics), one; unless the user says otherwise (``--threads N`` / ``$EEBENCH_THREADS``: both).

The CPUs a process may use are the fewest of: its CPU affinity (``os.sched_getaffinity``: taskset,
cpusets, a SLURM task's binding), its cgroup CPU quota where one is set (``cpu.max`` of cgroup v2, or
``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` of v1, rounded up), and ``$SLURM_CPUS_PER_TASK``.
torch's own default counts the machine's cores, which oversubscribes a container or a SLURM task
given fewer; an intra-op pool larger than the CPUs it gets makes its threads wait on each other.
The fits' matrix products are small (a mini-batch of 256 through one-layer IMs): a second thread
gains them 15–30 % alone and costs them 5–8 times their time when a second run shares the cores
(``docs/decisions.md`` H5, with the measurement).
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from eebench.errors import UsageError

#: Environment variable that sets the thread count where ``--threads`` is not given.
THREADS_ENV = "EEBENCH_THREADS"
#: Threads of the fits unless the user sets a count.
FIT_THREADS = 1
_CGROUP = Path("/sys/fs/cgroup")


def cgroup_cpu_quota(root: Path = _CGROUP) -> int | None:
    """CPUs granted by the cgroup CPU quota, rounded up (None where no quota is set or readable).

    Reads ``cpu.max`` (cgroup v2: ``"<quota> <period>"`` or ``"max <period>"``), else
    ``cpu/cpu.cfs_quota_us`` and ``cpu/cpu.cfs_period_us`` (v1; quota −1 means none).
    """
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota == "max":
            return None
        return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return max(1, math.ceil(quota / period)) if quota > 0 and period > 0 else None


def cpu_limits() -> dict[str, int]:
    """What limits this process's CPUs: ``{"affinity": n, "cgroup quota": n, "SLURM_CPUS_PER_TASK": n}``,
    each present where it applies."""
    limits = {"affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1}
    quota = cgroup_cpu_quota()
    if quota is not None:
        limits["cgroup quota"] = quota
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "").strip()
    if slurm.isdigit() and int(slurm) > 0:
        limits["SLURM_CPUS_PER_TASK"] = int(slurm)
    return limits


def available_cpus() -> int:
    """The CPUs this process may use: the fewest of :func:`cpu_limits`."""
    return min(cpu_limits().values())


def parse_threads(value: object, where: str) -> int:
    """A thread count given by the user: an integer ≥ 1.

    Raises:
        UsageError: 0, a negative number or a non-integer (``where`` names the option).
    """
    text = str(value).strip()
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"{where} {value}: expected a whole number of threads >= 1 (default: the CPUs this "
                         f"process may use, {available_cpus()} here)")
    return int(text)


def resolve_threads(requested: object = None) -> tuple[int, str]:
    """The thread count to use and where it came from: ``requested`` (``--threads``), else
    ``$EEBENCH_THREADS``, else :func:`available_cpus`.

    Returns:
        ``(n, source)``, source one of ``"--threads"``, ``"EEBENCH_THREADS"``, ``"available CPUs"``.

    Raises:
        UsageError: see :func:`parse_threads`.
    """
    if requested is not None:
        return parse_threads(requested, "--threads"), "--threads"
    env = os.environ.get(THREADS_ENV)
    if env not in (None, ""):
        return parse_threads(env, THREADS_ENV), THREADS_ENV
    return available_cpus(), "available CPUs"


def data_workers(cpus: int | None = None) -> int:
    """Data-loading workers of a backbone pass on ``cpus`` CPUs (default :func:`available_cpus`): all but
    one, left to the main process, where there are more than two; else one."""
    cpus = available_cpus() if cpus is None else cpus
    return cpus - 1 if cpus > 2 else 1


def set_threads(n: int) -> None:
    """Size torch's intra-op pool to ``n`` threads."""
    import torch

    torch.set_num_threads(int(n))


def fit_threads() -> int:
    """Threads of the fits: ``$EEBENCH_THREADS`` where the user set a count (``--threads`` sets it
    too), else :data:`FIT_THREADS`.

    Raises:
        UsageError: see :func:`parse_threads`.
    """
    return resolve_threads()[0] if os.environ.get(THREADS_ENV) else FIT_THREADS


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op pool at ``n`` threads inside the block, restored after it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)
