"""MNIST (``ylecun/mnist``): 28×28 grey digits, read from the hub or a local mirror."""
from __future__ import annotations

from eebench.data.spec import DatasetSpec, register_dataset

register_dataset(DatasetSpec(
    name="mnist", hub_id="ylecun/mnist", num_classes=10, default_backbone="t2t_vit_7", hflip_invariant=False,
    description="MNIST, 60k/10k 28x28 grey digits"))
