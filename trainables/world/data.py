"""The downstream data set ``toy_lt``: a long-tailed train split, a balanced validation split from
unused training images and a balanced test split, all rendered from the toy world.

Instance j of class c in split s is the image ``render(c, s, c * INSTANCE_STRIDE + j)``: it does
not move when n_max, val_per_class or the imbalance ratio change, and the long-tailed subset is
chosen exactly as for CIFAR-LT (``trainables.data.longtail``).
"""

from __future__ import annotations

import numpy as np
import torch

from trainables.config import DatasetConfig, RuntimeConfig
from trainables.data import DATASETS
from trainables.data.base import DataSplits, LabeledImages
from trainables.data.longtail import group_reference, longtail_counts, longtail_indices
from trainables.world.render import World, make_world

INSTANCE_STRIDE = 1 << 20  # instances per class and split: image ids never collide across classes


class _RenderedImages:
    """``load`` for LabeledImages over pre-rendered uint8 images (picklable, unlike a lambda)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __call__(self, i: int) -> torch.Tensor:
        return self.images[i].clone()  # transforms must not write into the split


class _Describe:
    """``describe`` for LabeledImages: where in the world an item comes from."""

    def __init__(self, world: World, split: str, ids: np.ndarray) -> None:
        self.seed, self.split, self.ids = world.config.seed, split, ids

    def __call__(self, i: int) -> str:
        c, j = divmod(int(self.ids[i]), INSTANCE_STRIDE)
        return f"toy world seed {self.seed}, {self.split} split, class {c} instance {j}"


def instance_ids(labels: np.ndarray, instance: np.ndarray) -> np.ndarray:
    """The render index of instance ``instance`` of class ``labels`` (elementwise)."""
    return np.asarray(labels, dtype=np.int64) * INSTANCE_STRIDE + np.asarray(instance, dtype=np.int64)


def balanced_labels(num_classes: int, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels, instance) of ``per_class`` images of every class, class-major."""
    return np.repeat(np.arange(num_classes), per_class), np.tile(np.arange(per_class), num_classes)


def rendered_split(world: World, split: str, labels: np.ndarray, instance: np.ndarray) -> LabeledImages:
    """A LabeledImages of the given instances, rendered now (thousands of images per second)."""
    ids = instance_ids(labels, instance)
    images = world.render(labels, split, ids)
    return LabeledImages(labels, _RenderedImages(images), describe=_Describe(world, split, ids))


@DATASETS.register("toy_lt")
def toy_lt(cfg: DatasetConfig, runtime: RuntimeConfig) -> DataSplits:
    """The toy world's long-tailed splits (class 0 = head, classes in natural order)."""
    wcfg = cfg.world
    C = wcfg.num_classes
    if cfg.num_classes not in (None, C):
        raise ValueError(f"dataset.num_classes={cfg.num_classes} but dataset.world.num_classes={C}; "
                         f"set dataset.world.num_classes and leave dataset.num_classes unset")
    world = make_world(wcfg)
    cap = cfg.limit_per_class
    counts = longtail_counts(wcfg.n_max, C, cfg.imbalance_ratio, cfg.profile)
    if cap is not None:
        counts = np.minimum(counts, cap)
    val_n = cfg.val_per_class if cap is None else min(cfg.val_per_class, cap)
    test_n = wcfg.test_per_class if cap is None else min(wcfg.test_per_class, cap)

    # The training pool holds n_max + val_n instances of every class, so the head keeps n_max
    # images and validation still comes from images the long-tailed subset left unused.
    pool_y, pool_j = balanced_labels(C, int(counts.max()) + val_n)
    train_idx, val_idx = longtail_indices(pool_y, counts, cfg.split_seed, val_n)
    test_y, test_j = balanced_labels(C, test_n)
    group_counts, group_rule = group_reference(cfg, counts, wcfg.n_max)
    return DataSplits(
        train=rendered_split(world, "train", pool_y[train_idx], pool_j[train_idx]),
        val=rendered_split(world, "train", pool_y[val_idx], pool_j[val_idx]),
        test=rendered_split(world, "test", test_y, test_j),
        class_names=[world.class_name(c) for c in range(C)],
        train_counts=counts, group_counts=group_counts, group_rule=group_rule,
        meta={"source": f"toy world seed {wcfg.seed}", "n_max": wcfg.n_max,
              "imbalance_ratio": float(counts.max() / counts.min()),
              "class_parts": [world.class_name(c, long=True) for c in range(C)]})
