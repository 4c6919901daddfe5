"""A fitted run deployed: the exits executed for real on the frozen backbone, block by block, exited
samples dropped (:mod:`~eebench.deploy.runtime`), timed against the plain backbone
(:mod:`~eebench.deploy.latency`), and a run's fitted method rebuilt from its saved exits without
refitting (:mod:`~eebench.deploy.replay`). It imports the core, the data layer, backbones and the
harness; never sweep, report or cli.
"""
