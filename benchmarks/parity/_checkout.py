"""What every parity script shares before the official code loads: the budgets of its table, a
one-line exit, the check that ``--official-dir`` is the checkout the script was written against,
and the options every script takes. Standard library only, so that a wrong checkout is reported
before torch loads.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

#: Budgets of the table (mean normalised cost on the selection half of val).
BUDGETS = (0.25, 0.5, 0.75)


def fail(message: str, status: int = 2) -> None:
    """Print ``message`` as one line on stderr and exit with ``status``."""
    print(" ".join(str(message).split()), file=sys.stderr)
    raise SystemExit(status)


def check_checkout(path: Path | None, repo: str, commit: str) -> Path:
    """The checkout of ``repo`` at ``path`` if its HEAD is ``commit``; otherwise exit 2 with one line
    naming both commits (``git -C PATH rev-parse HEAD``), and with no ``--official-dir`` what to fetch.

    Args:
        path: ``--official-dir`` (None: not given).
        repo: ``owner/name`` on GitHub.
        commit: the 40-hex commit the calling script was written against.

    Returns:
        ``path``, resolved.
    """
    fetch = f"git clone https://github.com/{repo} DIR && git -C DIR checkout {commit}, then pass --official-dir DIR"
    if path is None:
        fail(f"no --official-dir: this script runs the official code of {repo} at commit {commit}; fetch it: {fetch}")
    path = Path(path)
    found = "no git checkout (no commit)"
    if path.is_dir():
        proc = subprocess.run(["git", "-C", str(path), "rev-parse", "--show-toplevel", "HEAD"],
                              capture_output=True, text=True)
        lines = proc.stdout.split()
        if proc.returncode == 0 and len(lines) == 2:
            found = (lines[1] if Path(lines[0]).resolve() == path.resolve()
                     else f"no git checkout (a folder inside the checkout {lines[0]} at {lines[1]})")
    if found != commit:
        fail(f"--official-dir {path}: expected {repo} at commit {commit}, found {found}; "
             f"check out {commit} there (git -C {path} checkout {commit}) or fetch it: {fetch}")
    return path.resolve()


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of every parity script: the checkout, the run's setting and ``--verbose``."""
    parser.add_argument("--official-dir", type=Path, metavar="PATH",
                        help="a git checkout of the official repository at the commit above")
    parser.add_argument("--dataset", default="digits", help="dataset (default digits)")
    parser.add_argument("--backbone", help="backbone (default: the dataset's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of both sides (default 0)")
    parser.add_argument("--data-dir", type=Path, help="local data mirror, as eebench run")
    parser.add_argument("--weights-dir", type=Path, help="folder of published checkpoints, as eebench run")
    parser.add_argument("--cache-dir", type=Path, help="feature cache root, as eebench run")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="run-config override, as eebench run --set (method.*, dataset.*, im.*, weights, ...)")
    parser.add_argument("--verbose", action="store_true", help="show what the official code prints (on stderr)")
