"""CIFAR-10 (``uoft-cs/cifar10``) and CIFAR-100 (``uoft-cs/cifar100``, its 100 fine classes), read
from the hub or a local mirror ``DIR/<name>/{train,test}.parquet`` in the hub's schema (columns
``img`` and ``label`` / ``fine_label``, ``coarse_label``)."""
from __future__ import annotations

from eebench.data.spec import DatasetSpec, register_dataset

register_dataset(DatasetSpec(
    name="cifar10", hub_id="uoft-cs/cifar10", num_classes=10, default_backbone="cifar_resnet56",
    image_column="img", hflip_invariant=True, description="CIFAR-10, 50k/10k 32x32 colour images"), aliases=("cifar-10",))
register_dataset(DatasetSpec(
    name="cifar100", hub_id="uoft-cs/cifar100", num_classes=100, default_backbone="t2t_vit_14",
    image_column="img", label_column="fine_label", hflip_invariant=True,
    description="CIFAR-100, 50k/10k 32x32 colour images, 100 fine classes"), aliases=("cifar-100",))
