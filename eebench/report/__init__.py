"""From run records to what a reader sees: the long-format tables (:mod:`~eebench.report.table`), the
choice of points on val (:mod:`~eebench.report.selection`), the bootstrap over test samples
(:mod:`~eebench.report.bootstrap`), the leaderboards (:mod:`~eebench.report.leaderboard`), the
figures (:mod:`~eebench.report.plots`) and the re-run of committed results
(:mod:`~eebench.report.reproduce`). The tables, selection, bootstrap, leaderboards and figures import
the core only: they read records and tables, never a model or a method (``tests/test_layout.py``);
``reproduce`` alone imports the layers below (sweep, harness), to re-run runs.
"""
