"""What every data set builder returns: three labelled image splits with class metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset


class LabeledImages(Dataset):
    """A split: ``__getitem__`` gives ``(image, label)``; ``labels`` is an int64 array.

    ``load(i)`` returns a uint8 tensor [3, H, W]; ``transform`` (uint8 tensor -> float tensor)
    is set by the trainable from the backbone's preprocessing.
    """

    def __init__(self, labels: np.ndarray, load: Callable[[int], torch.Tensor],
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 describe: Callable[[int], str] | None = None) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        self._load = load
        self.transform = transform
        self.describe = describe or (lambda i: f"item {i}")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        img = self._load(int(i))
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.labels[i])

    def with_transform(self, transform: Callable[[torch.Tensor], torch.Tensor] | None) -> "LabeledImages":
        """The same split with another transform (no data copied)."""
        return LabeledImages(self.labels, self._load, transform, self.describe)


@dataclass
class DataSplits:
    """Train (long-tailed), val (class-balanced, from unused training images) and test splits."""

    train: LabeledImages
    val: LabeledImages
    test: LabeledImages
    class_names: list[str]
    train_counts: np.ndarray  # images per class in the long-tailed training split
    group_counts: np.ndarray  # counts the D-groups are computed from (train_counts or a reference IR)
    group_rule: str           # e.g. "train_counts" or "reference_ir=100"
    meta: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)
