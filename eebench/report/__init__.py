"""From run records to what a reader sees: the long-format tables (:mod:`~eebench.report.table`), the
choice of points on val (:mod:`~eebench.report.selection`), the bootstrap over test samples
(:mod:`~eebench.report.bootstrap`), the leaderboards (:mod:`~eebench.report.leaderboard`), the
diagnostics beyond the curve (:mod:`~eebench.report.diagnostics`: oracle, failure prediction,
overthinking), the web page (:mod:`~eebench.report.html`), the figures (:mod:`~eebench.report.plots`,
:mod:`~eebench.report.diagnostic_plots`, drawn in :mod:`~eebench.report.figure_style`) and the re-run
of committed results
(:mod:`~eebench.report.reproduce`). The tables, selection, bootstrap, leaderboards and figures import
the core only: they read records and tables, never a model or a method (``tests/test_layout.py``);
``reproduce`` alone imports the layers below (sweep, harness), to re-run runs.
"""
