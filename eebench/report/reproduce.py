"""``eebench reproduce``: re-run the committed runs of a setting and compare every leaderboard figure
with the committed one.

A setting is a grid of ``experiments/`` (``digits``, ``cifar10_resnet56``, ``mnist``,
``mnist_superpixels``) or a grid file. The runs re-run are the grid's runs whose ids are in the
committed table (``results/operating_points.parquet``), optionally narrowed to some methods and
seeds. The installed packages must be those of ``requirements.lock`` (checked before anything
runs). Both leaderboards are computed with the same options over the same runs; a figure holds when
``|new − committed| ≤ committed se`` (its bootstrap standard error), or is equal where the
committed table gives no se.
"""
from __future__ import annotations

import difflib
import logging
import math
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from eebench.errors import UsageError

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = ROOT / "experiments"
LOCK = ROOT / "requirements.lock"
COMMITTED = ROOT / "results" / "operating_points.parquet"
#: Grids of ``experiments/`` that are not a setting of the committed table.
NOT_SETTINGS = ("methods", "smoke", "paper_base")


def settings() -> list[str]:
    """The named settings: the grids of ``experiments/`` with committed results in mind."""
    return sorted(p.stem for p in EXPERIMENTS.glob("*.yaml") if p.stem not in NOT_SETTINGS
                  and not p.stem.startswith("paper_"))


def grid_path(setting: str) -> Path:
    """The grid file of a named setting, or ``setting`` itself when it is a file.

    Raises:
        UsageError: neither (with the valid names and a "did you mean").
    """
    path = Path(setting)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    if setting in settings():
        return EXPERIMENTS / f"{setting}.yaml"
    close = difflib.get_close_matches(setting, settings(), n=1, cutoff=0.5)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise UsageError(f"unknown setting '{setting}'{hint}; valid: {', '.join(settings())}, or a grid file")


def locked_versions(lock: Path | None = None) -> dict[str, str]:
    """``name → version`` of every package pinned in a pip-compile lock (default ``requirements.lock``;
    names normalised)."""
    out = {}
    for line in Path(lock or LOCK).read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", line)
        if m:
            out[_normal(m.group(1))] = m.group(2)
    return out


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def check_lock(lock: Path | None = None) -> list[tuple[str, str, str]]:
    """``(package, locked, installed)`` for every locked package whose installed version differs
    (``installed`` is "absent" when it is not installed). Empty when there is no lock file."""
    lock = Path(lock or LOCK)
    if not lock.is_file():
        return []
    drift = []
    for name, version in sorted(locked_versions(lock).items()):
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "absent"
        if installed != version:
            drift.append((name, version, installed))
    return drift


@dataclass
class Plan:
    """What a reproduction re-runs: the configs, and the committed table's rows of them."""

    grid: Any
    configs: list[Any]
    committed: pd.DataFrame
    committed_samples: pd.DataFrame | None

    def describe(self) -> str:
        runs = self.committed.drop_duplicates("run_id")
        methods = ", ".join(sorted(runs["method"].unique()))
        seeds = ", ".join(str(s) for s in sorted(runs["seed"].unique()))
        seconds = runs["run_seconds"].sum() if "run_seconds" in runs else math.nan
        last = f"; the committed runs took {seconds:.0f} s of run time" if math.isfinite(seconds) else ""
        return (f"reproduce {self.grid.name}: {len(self.configs)} runs ({methods}; seeds {seeds}) on "
                f"{', '.join(sorted({f'{c.dataset} / {c.backbone}' for c in self.configs}))}{last}")


def plan(setting: str, methods: list[str] | None = None, seeds: list[int] | None = None,
         table: Path = COMMITTED) -> Plan:
    """The committed runs of ``setting`` to re-run.

    Raises:
        UsageError: an unknown setting; a table without runs of it (or of the methods/seeds asked).
    """
    from eebench.report import table as tables
    from eebench.harness.method import load_methods
    from eebench.sweep.grids import expand, load_grid

    grid = load_grid(grid_path(setting))
    registry = load_methods()
    wanted = {registry.canonical(m) for m in methods} if methods else None
    df = tables.read_table(table)
    samples = tables.read_samples(Path(table).parent)
    committed_ids = set(df["run_id"])
    configs = [c for c in expand(grid) if c.run_id in committed_ids
               and (wanted is None or c.method in wanted) and (seeds is None or c.seed in seeds)]
    if not configs:
        raise UsageError(f"{table} holds no run of setting {grid.name}"
                         + (f" with methods {sorted(wanted)}" if wanted else "")
                         + (f" and seeds {seeds}" if seeds else "")
                         + "; regenerate it (README, Results) or pick another setting")
    ids = {c.run_id for c in configs}
    rows = df[df["run_id"].isin(ids)].reset_index(drop=True)
    kept = None if samples is None else samples[samples["run_id"].isin(ids)].reset_index(drop=True)
    return Plan(grid, configs, rows, kept)


OTHER_WEIGHTS = 3
"""Exit status of ``eebench reproduce`` when a backbone trained here differs from the committed one."""


def other_weights(committed: pd.DataFrame, new: pd.DataFrame) -> str:
    """The backbones whose ``weights_sha256`` in the new runs' table differs from the committed
    table's, as "backbone (dataset): committed SHA, here SHA; ..." ("" where all match)."""
    keys = ["dataset", "backbone"]
    old = committed.drop_duplicates(keys).set_index(keys)["weights_sha256"]
    now = new.drop_duplicates(keys).set_index(keys)["weights_sha256"]
    return "; ".join(f"{b} ({d}): committed {old[(d, b)]}, here {sha}" for (d, b), sha in now.items()
                     if (d, b) in old.index and old[(d, b)] != sha)


def compare(committed: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Figure by figure, the committed and the new leaderboard: one row per (variant, figure) with
    ``committed``, ``new``, ``delta``, ``se`` and ``holds`` (|delta| ≤ se, or equal where se is
    undefined; undefined in both counts as holding)."""
    keys = ["dataset", "backbone", "variant"]
    a, b = committed.set_index(keys), new.set_index(keys)
    rows = []
    for key in a.index.union(b.index):
        for column in [c for c in a.columns if c.endswith("_mean")]:
            figure = column.removesuffix("_mean")
            old = float(a.loc[key, column]) if key in a.index else math.nan
            now = float(b.loc[key, column]) if key in b.index else math.nan
            se = float(a.loc[key, f"{figure}_se"]) if key in a.index and f"{figure}_se" in a.columns else math.nan
            if math.isnan(old) and math.isnan(now):
                holds = True
            elif math.isnan(old) or math.isnan(now):
                holds = False
            else:
                holds = abs(now - old) <= (se if math.isfinite(se) else 1e-9)
            rows.append({**dict(zip(keys, key)), "figure": figure, "committed": old, "new": now,
                         "delta": now - old, "se": se, "holds": holds})
    return pd.DataFrame(rows)
