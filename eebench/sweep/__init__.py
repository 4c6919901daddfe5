"""Grids of runs: YAML grids expanded into run configurations (:mod:`~eebench.sweep.grids`), the
feature and run jobs (:mod:`~eebench.sweep.tasks`) and the launchers that send them inline, to local
subprocesses or to SLURM through submitit (:mod:`~eebench.sweep.launchers`). It imports the layers
below it (core, data, backbones, harness, deploy); never report or cli.
"""
