"""``eebench latency RUN_DIR``: measured speed-up of a run's operating points (:mod:`eebench.deploy.latency`)."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``latency``."""
    from eebench.cli.main import add_dir_options

    p = subparsers.add_parser(
        "latency", help="run a finished run's exits for real and time them against the plain backbone",
        description="Execute the run's fitted exits block by block on its test samples (exited samples leave the "
                    "batch), time each operating point against the plain backbone on the same samples, and write "
                    "RUN_DIR/latency.json: per point the Mul-Add, time-profile and measured speed-ups, p50/p90 "
                    "latency per call, the runtime's agreement with the record, and that of each point's rule "
                    "on the cached IM inputs. Time on an otherwise idle machine. Needs the run's data and weights "
                    "(--data-dir, --weights-dir as for `run`).")
    p.add_argument("run_dir", type=Path, help="a finished run's directory (runs/<run id>)")
    p.add_argument("--batch-size", type=int, default=256, help="samples per call (1: one at a time; default 256)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--points", default="all",
                   help="all (default), or budgets: for each, the point whose val cost is nearest (e.g. 0.5,0.75)")
    p.add_argument("--samples", type=int, help="time the first N test samples (default: all)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per measurement, median reported (default 3)")
    add_dir_options(p)
    p.set_defaults(handler=cmd_latency)


def cmd_latency(args: argparse.Namespace) -> int:
    from eebench.deploy import latency
    from eebench.harness.runner import RunOptions

    opts = latency.LatencyOptions(args.batch_size, args.device, args.points, args.samples, args.repeats)
    result = latency.measure(args.run_dir, RunOptions(args.data_dir, args.weights_dir, args.cache_dir), opts)
    print(latency.summary(result))
    print(f"written: {args.run_dir / latency.LATENCY_FILE}")
    return 0
