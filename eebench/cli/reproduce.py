"""``eebench reproduce SETTING``: re-run the committed runs of a setting and check every leaderboard
figure against the committed table (:mod:`eebench.report.reproduce`).

::

    eebench reproduce digits [--methods threshold,jei] [--seeds 0] [--out runs/reproduce] [--allow-drift]
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``reproduce``."""
    from eebench.cli.main import add_common_options

    p = subparsers.add_parser(
        "reproduce", help="re-run a setting's committed runs and compare with the committed table",
        description="Re-run the runs of SETTING (a grid of experiments/, or a grid file) that the committed table "
                    "holds, then compare every leaderboard figure with the committed one: each must lie within its "
                    "standard error. Exit 1 with a table of what moved. The installed packages must match "
                    "requirements.lock (--allow-drift to go on anyway).")
    p.add_argument("setting", help="digits, cifar10_resnet56, mnist, mnist_superpixels, or a grid file")
    p.add_argument("--methods", help="comma-separated subset of the methods (default: all committed)")
    p.add_argument("--seeds", help="comma-separated subset of the seeds (default: all committed)")
    p.add_argument("--table", type=Path, help="the committed table (default results/operating_points.parquet)")
    p.add_argument("--out", type=Path, help="where the new run records go (default runs/reproduce/<setting>)")
    p.add_argument("--allow-drift", action="store_true", help="run even if installed versions differ from the lock")
    p.add_argument("--batch-size", type=int, default=256, help="batch size of the backbone pass")
    p.add_argument("--num-workers", type=int, help="data-loading workers of the backbone pass "
                                                    "(default: the CPUs this process may use less one, at least 1)")
    add_common_options(p)
    p.set_defaults(handler=cmd_reproduce)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from eebench.sweep import launchers
    from eebench import paths
    from eebench.report import leaderboard, reproduce
    from eebench.cli.report import tables
    from eebench.errors import UsageError
    from eebench.harness.runner import RunOptions

    drift = reproduce.check_lock()
    if drift:
        name, locked, installed = drift[0]
        more = f" (and {len(drift) - 1} more)" if len(drift) > 1 else ""
        if not args.allow_drift:
            raise UsageError(f"installed {name} {installed} is not the lock's {locked}{more}: install from "
                             f"requirements.lock (README) or pass --allow-drift")
        log.warning("reproduce: installed packages differ from requirements.lock: %s",
                    ", ".join(f"{n} {i} (lock {v})" for n, v, i in drift))
    try:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    except ValueError:
        raise UsageError(f"--seeds {args.seeds}: expected comma-separated integers, e.g. 0,1") from None
    plan = reproduce.plan(args.setting, args.methods.split(",") if args.methods else None, seeds,
                          args.table or reproduce.COMMITTED)
    print(plan.describe(), flush=True)
    out = args.out or Path("runs") / "reproduce" / plan.grid.name
    paths.writable_dir(out, "--out")
    paths.cache_dir(args.cache_dir)
    options = RunOptions(args.data_dir, args.weights_dir, args.cache_dir, out, args.batch_size, args.num_workers)
    result = launchers.run_sweep(plan.grid, plan.configs, options, "inline", progress=lambda m: log.info("%s", m))
    print(result.summary())
    if not result.ok:
        return 1
    opts = leaderboard.ReportOptions()
    new, new_samples = tables(out, None, opts, {c.run_id for c in plan.configs})
    cmp = reproduce.compare(leaderboard.leaderboard(plan.committed, plan.committed_samples, opts),
                            leaderboard.leaderboard(new, new_samples, opts))
    other = reproduce.other_weights(plan.committed, new)
    moved = cmp[~cmp["holds"]]
    if other:
        print(f"not comparable: {other}; this machine's kernels trained another backbone than the committed "
              f"one (README, Reproducing), so {len(moved)} of {len(cmp)} figures moving says nothing; reproduce "
              f"on the committed runs' CPU, or regenerate the setting's results here")
        return reproduce.OTHER_WEIGHTS
    if moved.empty:
        print(f"reproduced: all {len(cmp)} figures of {cmp['variant'].nunique()} method variants within their "
              f"standard errors of the committed table (largest |delta| {cmp['delta'].abs().max():.4f})")
        return 0
    print(f"{len(moved)} of {len(cmp)} figures moved beyond their standard error:")
    print(moved.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    return 1
