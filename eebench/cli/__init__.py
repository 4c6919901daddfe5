"""The ``eebench`` command line, the only place that parses arguments or prints: ``run``, ``list``
and ``backbone`` (:mod:`~eebench.cli.main`), ``report`` and ``plot`` (:mod:`~eebench.cli.report`),
``sweep`` (:mod:`~eebench.cli.sweep`), ``reproduce`` (:mod:`~eebench.cli.reproduce`) and ``latency``
(:mod:`~eebench.cli.latency`). It may import every layer; nothing imports it.
"""
