"""The harness: one run from a dataset's splits and a frozen backbone to a record. It holds the run
configuration (:mod:`~eebench.harness.config`), the feature cache (:mod:`~eebench.harness.features`),
the Mul-Add cost profile (:mod:`~eebench.harness.costs`), the shared IM stage
(:mod:`~eebench.harness.im_stage`), the training loops and exit policies methods use
(:mod:`~eebench.harness.training`, :mod:`~eebench.harness.exit_policy`), the method plugin contract
(:mod:`~eebench.harness.method`, re-exported to plugins by :mod:`eebench.method`), the one metrics
module (:mod:`~eebench.harness.metrics`), devices and threads, and the runner
(:mod:`~eebench.harness.runner`). It imports the core, :mod:`eebench.data` and
:mod:`eebench.backbones`; never deploy, sweep, report or cli.
"""
