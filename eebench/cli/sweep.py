"""``eebench sweep``: expand a YAML grid into runs and launch them (SLURM, local, inline), or
gather what they recorded.

::

    eebench sweep GRID.yaml [--launcher auto|slurm|local|inline] [--profile slurm/NAME.yaml]
                            [--dry-run] [--collect] [--max-parallel N] [--runs-per-task N]
                            [--out DIR] [--log-dir DIR] [--no-wait] [--set GRIDKEY=VALUE ...]

Exit status: 0 every run of the grid has a record; 1 some run failed (or, with ``--collect``,
has no record yet), listed with its log file; 2 bad input (grid, profile, unknown name).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``sweep``."""
    from eebench.cli.main import add_common_options

    p = subparsers.add_parser(
        "sweep", help="run a YAML grid of runs (SLURM job arrays through submitit, local, or inline)",
        description="Expand GRID (datasets x backbones x methods x parameters x seeds) into runs, skip "
                    "those whose record exists, build each feature cache once, then run the rest. "
                    "--set here takes dotted grid keys: --set seeds=[0] --set methods.jei.epochs=5.")
    p.add_argument("grid", type=Path, metavar="GRID.yaml", help="grid file (see experiments/)")
    p.add_argument("--launcher", default="auto", choices=["auto", "slurm", "local", "inline"],
                   help="slurm: job arrays through submitit; local: subprocesses here (submitit); "
                        "inline: this process; auto (default): slurm when sbatch is on PATH, else local")
    p.add_argument("--profile", type=Path, help="executor profile, e.g. slurm/local.yaml or slurm/gpu.yaml")
    p.add_argument("--dry-run", action="store_true", help="print the runs and stages; submit nothing")
    p.add_argument("--collect", action="store_true",
                   help="only check the grid's records: how many are there, and the runs still missing")
    p.add_argument("--max-parallel", type=int, help="SLURM array parallelism / local subprocesses at once")
    p.add_argument("--runs-per-task", type=int, default=1,
                   help="runs per job (array task): >1 saves job start-up on short runs (default 1)")
    p.add_argument("--out", type=Path, default=Path("runs"), help="run records folder (default ./runs)")
    p.add_argument("--log-dir", type=Path, help="submitit folder for job logs (default OUT/_sweeps/<grid>-<time>)")
    p.add_argument("--no-wait", action="store_true",
                   help="return once submitted (SLURM); gather later with --collect")
    p.add_argument("--batch-size", type=int, default=256, help="batch size of the backbone pass")
    p.add_argument("--num-workers", type=int, help="data-loading workers of the backbone pass "
                                                    "(default: the CPUs this process may use less one, at least 1)")
    p.add_argument("--device", default="auto",
                   help="where the backbone pass runs: auto (default), cpu, cuda, cuda:N (a profile's device: wins)")
    add_common_options(p)
    p.set_defaults(handler=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    from eebench.sweep import launchers
    from eebench import paths
    from eebench.sweep.grids import expand, load_grid
    from eebench.harness.runner import RunOptions

    grid = load_grid(args.grid, args.sets)
    configs = expand(grid, args.data_dir)
    paths.writable_dir(args.out, "--out")
    paths.cache_dir(args.cache_dir)
    from eebench.deploy.latency import grid_spec

    options = RunOptions(args.data_dir, args.weights_dir, args.cache_dir, args.out, args.batch_size, args.num_workers,
                         args.device, grid_spec(grid.spec.get("latency"), f"grid {grid.name}"))
    if args.dry_run:
        return _dry_run(grid, configs, args)
    if args.collect:
        return _collect(grid, configs, args)
    profile = launchers.load_profile(args.profile)
    try:
        report = launchers.run_sweep(grid, configs, options, args.launcher, profile, args.max_parallel,
                                 args.runs_per_task, args.log_dir, wait=not args.no_wait,
                                 progress=lambda m: log.info("%s", m))
    except KeyboardInterrupt:
        if args.launcher == "inline":
            print("interrupted: finished runs keep their records, the interrupted one wrote nothing; rerun this "
                  "command to run the rest (it skips every run that has a record)", file=sys.stderr)
        else:
            print("interrupted: SLURM jobs already submitted keep running (squeue); gather their records with "
                  "--collect, or rerun this command, which skips every run that has a record", file=sys.stderr)
        return 130
    print(report.summary())
    return 0 if report.ok else 1


def _dry_run(grid, configs, args: argparse.Namespace) -> int:
    from eebench.sweep import launchers

    from eebench.deploy.latency import grid_spec

    done, groups = launchers.plan(configs, args.out, grid_spec(grid.spec.get("latency"), f"grid {grid.name}") is not None)
    launcher = launchers.resolve_launcher(args.launcher) if args.launcher != "inline" else "inline"
    print(f"grid {grid.name}: {len(configs)} runs ({len(done)} already recorded under {args.out}); "
          f"launcher {launcher}")
    from eebench.harness.method import load_methods

    methods = load_methods()
    for c in configs:
        state = "recorded" if c.run_id in done else "pending"
        defaults = methods.get(c.method).parameters
        params = ", ".join(f"{k}={v}" for k, v in c.method_params.items() if v != defaults.get(k))
        print(f"  {state:<8} {c.run_id}  {params or '(defaults)'}")
    print(f"stages: {len(groups)} feature job(s), then "
          f"{sum(-(-len(r) // max(1, args.runs_per_task)) for r in groups.values())} run task(s)")
    for stage, runs in groups.items():
        print(f"  features {stage} {stage.params()} -> {len(runs)} runs")
    return 0


def _collect(grid, configs, args: argparse.Namespace) -> int:
    from eebench.records import collect

    records, missing = collect([c.run_id for c in configs], args.out)
    print(f"grid {grid.name}: {len(records)} of {len(configs)} runs recorded under {args.out}")
    if missing:
        print("no record yet:")
        for run_id in missing:
            print(f"  {run_id}")
    print("tables and leaderboards (operating points chosen on val, reported on test): eebench report "
          + str(args.out), file=sys.stderr)
    return 0 if not missing else 1
