"""Input pipelines: how the rows of a hub-schema split become backbone inputs.

A backbone declares its pipeline (:attr:`eebench.backbones.BackboneSpec.pipeline`). The feature
pass, the cost profile and backbone training all go through it, so an image backbone and a graph
backbone share every other part of the harness.
"""
from __future__ import annotations

from typing import Any, Callable

import datasets
import timm
import torch
from torch import nn
from torch.utils.data import Dataset
from torchvision import transforms as T

from eebench.data.splits import DataSplits
from eebench.errors import ConfigError


class InputPipeline:
    """Turns split rows into ``(input, label)`` pairs for one backbone.

    Subclasses implement :meth:`dataset`; ``collate_fn`` is given to the DataLoader (None: torch's
    default stacking).
    """

    collate_fn: Callable | None = None

    def dataset(self, splits: DataSplits, split: str, model: nn.Module, augment: str = "none") -> Dataset:
        """Split ``split`` of ``splits`` as a torch dataset of ``(input, label)``.

        Args:
            augment: "none" for evaluation; a training augmentation name otherwise.

        Raises:
            ConfigError: unknown ``augment``.
        """
        raise NotImplementedError

    def describe(self, model: nn.Module) -> str:
        """The evaluation preprocessing, as text that changes whenever its output would (cache keys)."""
        raise NotImplementedError

    def example(self, splits: DataSplits, model: nn.Module) -> Any:
        """One input with a batch dimension of 1, for counting Mul-Adds."""
        ds = self.dataset(splits, "test", model)
        batch = (self.collate_fn or _stack)([ds[0]])
        return batch[0]


def _stack(items: list) -> Any:
    from torch.utils.data import default_collate

    return default_collate(items)


class ImagePipeline(InputPipeline):
    """Images through the model's timm evaluation transform (resize, centre crop, normalise), with
    torchvision augmentation on the PIL image for training: ``crop`` (random crop after padding by
    1/8 of the side) and ``crop_flip`` (plus horizontal flips, for classes a flip preserves)."""

    AUGMENTATIONS = ("none", "crop", "crop_flip")

    @staticmethod
    def eval_transform(model: nn.Module) -> Any:
        return timm.data.create_transform(**timm.data.resolve_data_config(model=model), is_training=False)

    @staticmethod
    def image_mode(model: nn.Module) -> str:
        """PIL mode matching the model's input channels ("L" for 1, "RGB" for 3)."""
        return "L" if timm.data.resolve_data_config(model=model)["input_size"][0] == 1 else "RGB"

    def transform(self, model: nn.Module, augment: str = "none") -> Any:
        if augment not in self.AUGMENTATIONS:
            raise ConfigError(f"augment={augment!r}: must be one of {', '.join(self.AUGMENTATIONS)}")
        if augment == "none":
            return self.eval_transform(model)
        size = timm.data.resolve_data_config(model=model)["input_size"][1:]
        steps = [T.Resize(size), T.RandomCrop(size, padding=size[0] // 8)]
        if augment == "crop_flip":
            steps.append(T.RandomHorizontalFlip())
        return T.Compose([*steps, self.eval_transform(model)])

    def dataset(self, splits: DataSplits, split: str, model: nn.Module, augment: str = "none") -> Dataset:
        spec = splits.spec
        return ImageDataset(splits.split(split), spec.image_column, spec.label_column,
                            self.transform(model, augment), self.image_mode(model))

    def describe(self, model: nn.Module) -> str:
        return f"{self.image_mode(model)} {self.eval_transform(model)!r}"


class ImageDataset(Dataset):
    """A hub-schema image split as ``(image_tensor, label)`` pairs through a timm transform.

    Args:
        split: the rows (an ``Image`` column and a ``ClassLabel`` column).
        transform: a timm/torchvision transform, PIL image → tensor ``[C, H, W]``.
        mode: PIL mode the image is converted to first ("RGB" for 3 input channels, "L" for 1).
    """

    def __init__(self, split: datasets.Dataset, image_column: str, label_column: str,
                 transform: Callable, mode: str):
        self.split, self.transform, self.mode = split, transform, mode
        self.image_column, self.label_column = image_column, label_column

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        row = self.split[int(i)]
        return self.transform(row[self.image_column].convert(self.mode)), int(row[self.label_column])
