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
    from eebench.cli import add_common_options

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
                   help="only gather the grid's records: a summary, and the runs still missing")
    p.add_argument("--max-parallel", type=int, help="SLURM array parallelism / local subprocesses at once")
    p.add_argument("--runs-per-task", type=int, default=1,
                   help="runs per job (array task): >1 saves job start-up on short runs (default 1)")
    p.add_argument("--out", type=Path, default=Path("runs"), help="run records folder (default ./runs)")
    p.add_argument("--log-dir", type=Path, help="submitit folder for job logs (default OUT/_sweeps/<grid>-<time>)")
    p.add_argument("--no-wait", action="store_true",
                   help="return once submitted (SLURM); gather later with --collect")
    p.add_argument("--results", type=Path, help="with --collect: also write the per-run summary as CSV")
    p.add_argument("--batch-size", type=int, default=256, help="batch size of the backbone pass")
    p.add_argument("--num-workers", type=int, default=1, help="data-loading workers of the backbone pass")
    add_common_options(p)
    p.set_defaults(handler=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    from eebench import sweep
    from eebench.runner import RunOptions

    from eebench import paths

    grid = sweep.load_grid(args.grid, args.sets)
    configs = sweep.expand(grid)
    paths.writable_dir(args.out, "--out")
    paths.cache_dir(args.cache_dir)
    options = RunOptions(args.data_dir, args.weights_dir, args.cache_dir, args.out, args.batch_size, args.num_workers)
    if args.dry_run:
        return _dry_run(grid, configs, args)
    if args.collect:
        return _collect(grid, configs, args)
    profile = sweep.load_profile(args.profile)
    try:
        report = sweep.run_sweep(grid, configs, options, args.launcher, profile, args.max_parallel,
                                 args.runs_per_task, args.log_dir, wait=not args.no_wait,
                                 progress=lambda m: log.info("%s", m))
    except KeyboardInterrupt:
        print("interrupted: SLURM jobs already submitted keep running (squeue); gather their records with "
              "--collect, or rerun this command, which skips every run that has a record", file=sys.stderr)
        return 130
    print(report.summary())
    return 0 if report.ok else 1


def _dry_run(grid, configs, args: argparse.Namespace) -> int:
    from eebench import sweep

    done, groups = sweep.plan(configs, args.out)
    launcher = sweep.resolve_launcher(args.launcher) if args.launcher != "inline" else "inline"
    print(f"grid {grid.name}: {len(configs)} runs ({len(done)} already recorded under {args.out}); "
          f"launcher {launcher}")
    from eebench.method import load_methods

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
    import pandas as pd

    from eebench import sweep
    from eebench.records import write_atomic

    records, missing = sweep.collect(configs, args.out)
    print(f"grid {grid.name}: {len(records)} of {len(configs)} runs recorded under {args.out}")
    if records:
        df = pd.DataFrame(sweep.summary_rows(records))
        print(df.drop(columns=["run_id"]).to_string(index=False, float_format=lambda x: f"{x:.3f}"))
        if args.results:
            write_atomic(args.results, df.to_csv(index=False, float_format="%.4f").encode())
            print(f"wrote {args.results}")
    if missing:
        print("no record yet:")
        for run_id in missing:
            print(f"  {run_id}")
    print("tables and leaderboards: eebench report " + str(args.out), file=sys.stderr)
    return 0 if not missing else 1
