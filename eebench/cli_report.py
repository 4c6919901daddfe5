"""``eebench report`` and ``eebench plot``: leaderboards and the JEI-DNN figures from run records
or from the operating-point table a previous report wrote (``results/operating_points.parquet``).

::

    eebench report SOURCE [--out results]   # SOURCE: a folder of run records, or the .parquet table
    eebench plot   SOURCE [--out plots]
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)

SOURCE_HELP = ("a folder of run records (searched recursively for */record.json), or the operating-point "
               "table a previous report wrote (results/operating_points.parquet)")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``report`` and ``plot``."""
    rep = subparsers.add_parser(
        "report", help="operating-point table (parquet) and leaderboard CSVs from run records",
        description="Collect run records into one long-format table of operating points "
                    "(OUT/operating_points.parquet; not rewritten when SOURCE is that table) and write "
                    "OUT/leaderboard.csv, OUT/leaderboard_<dataset>.csv and OUT/leaderboard.md.")
    rep.add_argument("source", type=Path, metavar="SOURCE", help=SOURCE_HELP)
    rep.add_argument("--out", type=Path, default=Path("results"), help="output folder (default ./results)")
    rep.set_defaults(handler=cmd_report)

    plot = subparsers.add_parser(
        "plot", help="the JEI-DNN paper's figures (PNG and PDF) for every setting",
        description="Draw, per dataset/backbone setting, accuracy vs normalised Mul-Add (Fig. 2), the exit "
                    "decomposition (Fig. 3), ECE per IM (Fig. 4) and the uncertainty figures (Fig. 5), "
                    "seeds as shaded bands, under OUT/<dataset>_<backbone>/.")
    plot.add_argument("source", type=Path, metavar="SOURCE", help=SOURCE_HELP)
    plot.add_argument("--out", type=Path, default=Path("plots"), help="output folder (default ./plots)")
    plot.set_defaults(handler=cmd_plot)


def _table(source: Path, table_out: Path | None):
    """The table of ``source``, always as read back from parquet, so that a report from run records
    and a later one from the committed table compute from the same values.

    From run records, the table is written to ``table_out/operating_points.parquet`` (a temporary
    folder when None) and read back; a ``.parquet`` source is read as it is.
    """
    import tempfile

    from eebench import report

    df, from_records = report.load(source)
    if not from_records:
        return df
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(table_out or tmp) / report.TABLE_NAME
        report.write_table(df, path)
        if table_out is not None:
            print(f"table: {path} ({len(df)} operating points of {df['run_id'].nunique()} runs, "
                  f"{path.stat().st_size / 1024:.0f} KiB)")
        return report.read_table(path)


def cmd_report(args: argparse.Namespace) -> int:
    from eebench import report

    df = _table(args.source, args.out)
    written = report.write_report(df, args.out)
    board = report.leaderboard(df)
    cols = ["dataset", "backbone", "variant", "seeds", "backbone_accuracy_mean", "accuracy_at_0.50_mean",
            "accuracy_at_0.75_mean", "auc_mean", "cost_to_backbone_minus_1pt_mean"]
    print(board[cols].to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    for path in written:
        print(f"wrote {path}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from eebench import plots

    written = plots.plot_all(_table(args.source, None), args.out)
    for path in written:
        print(f"wrote {path}")
    return 0
