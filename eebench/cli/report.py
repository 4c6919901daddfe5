"""``eebench report`` and ``eebench plot``: leaderboards and the JEI-DNN figures from run records
or from the tables a previous report wrote (``results/operating_points.parquet`` and the
``samples.parquet`` beside it).

::

    eebench report SOURCE [--out results] [--budgets 0.25,0.5,0.75,1] [--selection-split val] [--bootstrap 1000]
    eebench plot   SOURCE [--out plots]
"""
from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

SOURCE_HELP = ("a folder of run records (searched recursively for */record.json), or the operating-point "
               "table a previous report wrote (results/operating_points.parquet, samples.parquet beside it)")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``report`` and ``plot``."""
    rep = subparsers.add_parser(
        "report", help="operating-point tables (parquet), leaderboards, diagnostics and the web page from run records",
        description="Collect run records into the long-format tables of operating points and per-sample arrays "
                    "(OUT/operating_points.parquet, OUT/samples_<dataset>_<backbone>.parquet; not rewritten when SOURCE "
                    "is the table) and write OUT/leaderboard.csv, OUT/leaderboard_<dataset>.csv, OUT/leaderboard.md "
                    "(figures of the points chosen on val, with the bootstrap standard errors of their test "
                    "estimates), the shared IM stage's OUT/exits_<dataset>_<backbone>.csv, OUT/overthinking.csv, "
                    "OUT/diagnostics.md and OUT/index.html (all of it as one self-contained web page).")
    rep.add_argument("source", type=Path, metavar="SOURCE", help=SOURCE_HELP)
    rep.add_argument("--out", type=Path, default=Path("results"), help="output folder (default ./results)")
    rep.add_argument("--budgets", default="0.25,0.5,0.75,1", help="budgets, normalised cost (default 0.25,0.5,0.75,1)")
    rep.add_argument("--selection-split", default="val", help="split points are chosen on: val (default) or test "
                     "(only to measure what choosing on test flatters)")
    rep.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples (>= 100)")
    rep.set_defaults(handler=cmd_report)

    plot = subparsers.add_parser(
        "plot", help="the JEI-DNN paper's figures (PNG and PDF) for every setting",
        description="Draw, per dataset/backbone setting, accuracy vs normalised Mul-Add (Fig. 2), the exit "
                    "decomposition (Fig. 3), ECE per IM (Fig. 4) and the uncertainty figures (Fig. 5), "
                    "seeds as shaded bands, and where runs were timed (eebench latency) accuracy against measured "
                    "time per sample beside Mul-Adds (fig6), under OUT/<dataset>_<backbone>/.")
    plot.add_argument("source", type=Path, metavar="SOURCE", help=SOURCE_HELP)
    plot.add_argument("--out", type=Path, default=Path("plots"), help="output folder (default ./plots)")
    plot.set_defaults(handler=cmd_plot)


def _options(args: argparse.Namespace):
    from eebench.errors import UsageError
    from eebench.report.leaderboard import ReportOptions

    try:
        budgets = tuple(float(b) for b in str(args.budgets).split(",") if b.strip())
    except ValueError:
        raise UsageError(f"--budgets {args.budgets}: expected comma-separated numbers, e.g. 0.25,0.5,0.75,1") from None
    return ReportOptions(budgets, args.selection_split, args.bootstrap)


def tables(source: Path, out: Path | None, options=None, run_ids: set[str] | None = None):
    """The operating-point table and the samples table of ``source``, always as read back from
    parquet, so that a report from run records and a later one from the committed tables compute
    from the same values.

    From run records (only those of ``run_ids`` when given), both tables are written to a temporary
    folder, read back, and copied into ``out`` (when given) once both are whole; the samples table holds the points ``options``
    deploys. A ``.parquet`` source is read as it is, with the ``samples_*.parquet`` beside it (None
    when there is none).
    """
    from eebench.records import write_atomic
    from eebench.report import leaderboard, table

    source = Path(source)
    if source.is_file():
        return table.read_table(source), table.read_samples(source.parent)
    df, folders = table.collect(source)
    if run_ids is not None:
        df = df[df["run_id"].isin(run_ids)].reset_index(drop=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = folder / table.TABLE_NAME
        table.write_table(df, path)
        df = table.read_table(path)
        samples = table.sample_payloads(folders, leaderboard.payload_plan(df, options or leaderboard.ReportOptions()), df)
        written = table.write_samples(samples, df, folder)
        if out is not None:                 # into place only once both tables are whole
            for p in [path, *written]:
                write_atomic(Path(out) / p.name, p.read_bytes())
            for stale in set(Path(out).glob(table.SAMPLES_GLOB)) - {Path(out) / p.name for p in written}:
                stale.unlink()
            sizes = ", ".join(f"{p.name} {p.stat().st_size / 1024:.0f} KiB" for p in [path, *written])
            print(f"tables: {len(df)} operating points of {df['run_id'].nunique()} runs in {out}: {sizes}")
        return df, table.read_samples(folder)


def cmd_report(args: argparse.Namespace) -> int:
    from eebench.report import leaderboard

    from eebench.paths import writable_dir

    options = _options(args)
    writable_dir(args.out, "--out")
    df, samples = tables(args.source, args.out, options)
    board, written = leaderboard.write_report(df, samples, args.out, options)
    cols = ["dataset", "backbone", "variant", "seeds", "backbone_accuracy_mean", "accuracy_at_0.50_mean",
            "accuracy_at_0.50_se", "tied_with_best_at_0.50", "accuracy_at_0.75_mean", "auc_mean"]
    print(board[[c for c in cols if c in board.columns]].to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    for path in written:
        print(f"wrote {path}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from eebench.report import plots
    from eebench.paths import writable_dir

    writable_dir(args.out, "--out")
    df, samples = tables(args.source, None)
    written = plots.plot_all(df, args.out, samples)
    for path in written:
        print(f"wrote {path}")
    return 0
