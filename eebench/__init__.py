"""eebench: a comparative benchmark of early-exit neural networks (README, "Design").

Importing the package sets ``OMP_WAIT_POLICY=PASSIVE`` unless it is set already: OpenMP threads that
spin while they wait steal the CPU from each other when two processes share the cores (a feature pass
beside a second one took 3.7 times as long with spinning threads, 1.6 times with passive ones:
``docs/decisions.md`` H5). It takes effect only where torch is not imported yet.
"""
import os as _os

_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
