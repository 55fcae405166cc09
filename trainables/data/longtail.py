"""Long-tailed class counts, the seeded long-tailed subset with its balanced validation split, and
the D-groups (many / medium / few) the metrics report."""

from __future__ import annotations

from typing import Literal

import numpy as np

from trainables.config import DatasetConfig

# D-group thresholds on a class's downstream training count (the OLTR / LIFT convention):
# many: n > 100, medium: 20 <= n <= 100, few: n < 20.
MANY_ABOVE = 100
FEW_BELOW = 20
GROUP_NAMES = ("many", "medium", "few")


def longtail_counts(n_max: int, num_classes: int, imbalance_ratio: float,
                    profile: Literal["exp", "step"] = "exp") -> np.ndarray:
    """Images per class of a long-tailed split, class 0 the largest.

    exp:  n_i = int(n_max * (1/IR) ** (i / (C - 1)))  (Cao et al. 2019; LIFT's CIFAR-LT).
    step: the first floor(C/2) classes keep n_max, the rest int(n_max / IR) (the LDAM / BBN
          step convention; for odd C the extra class is a tail class).
    Every class keeps at least one image.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if imbalance_ratio < 1:
        raise ValueError(f"imbalance_ratio must be >= 1, got {imbalance_ratio}")
    if n_max < 1:
        raise ValueError(f"n_max must be >= 1, got {n_max}")
    i = np.arange(num_classes)
    if profile == "exp":
        counts = np.array([int(n_max * (1.0 / imbalance_ratio) ** (k / (num_classes - 1))) for k in i])
    elif profile == "step":
        counts = np.where(i < num_classes // 2, n_max, int(n_max / imbalance_ratio))
    else:
        raise ValueError(f"unknown long-tail profile {profile!r}; use 'exp' or 'step'")
    return np.maximum(counts, 1).astype(np.int64)


def longtail_indices(labels: np.ndarray, counts: np.ndarray, seed: int,
                     val_per_class: int | np.ndarray = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices into ``labels``: per class, a seeded shuffle of its indices gives the
    first ``counts[c]`` to train and the last ``val_per_class`` (an int, or one count per class) to val.

    Taking val from the end of the shuffle keeps it the same for every imbalance ratio (same seed;
    a smaller per-class count takes a suffix of the larger one) and disjoint from train. Both index
    arrays are sorted. ValueError naming the class when it has fewer than ``counts[c] + val[c]`` images.
    """
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.int64)
    val_n = np.broadcast_to(np.asarray(val_per_class, dtype=np.int64), counts.shape)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c, (n, v) in enumerate(zip(counts, val_n)):
        idx = np.flatnonzero(labels == c)
        if len(idx) < n + v:
            raise ValueError(
                f"class {c} has {len(idx)} images but needs {n} for the long-tailed train split "
                f"+ {v} for validation; lower dataset.val_per_class or the class count")
        idx = rng.permutation(idx)
        train.append(idx[:n])
        if v:
            val.append(idx[len(idx) - v:])
    empty = np.zeros(0, dtype=np.int64)
    return (np.sort(np.concatenate(train)) if train else empty,
            np.sort(np.concatenate(val)) if val else empty)


def validation_counts(counts: np.ndarray, available: np.ndarray, val_per_class: int) -> np.ndarray:
    """Validation images per class when validation may only use training images the long-tailed
    split leaves unused: min(val_per_class, available - counts), never below 0.

    The benchmark's train counts stay exact, so a head class that uses every image it has gets a
    smaller validation share or none (CIFAR-100-LT, exp: class 0 keeps all 500 images at every
    ratio and has no validation image; at IR 10 class 1 uses 488 of 500 and has 12).
    """
    spare = np.asarray(available, dtype=np.int64) - np.asarray(counts, dtype=np.int64)
    return np.clip(spare, 0, val_per_class).astype(np.int64)


def d_groups(group_counts: np.ndarray) -> np.ndarray:
    """Per class 0 / 1 / 2 for many (> 100) / medium (20..100) / few (< 20) training images."""
    n = np.asarray(group_counts)
    return np.where(n > MANY_ABOVE, 0, np.where(n >= FEW_BELOW, 1, 2)).astype(np.int64)


def group_reference(cfg: DatasetConfig, train_counts: np.ndarray, n_max: int) -> tuple[np.ndarray, str]:
    """(group_counts, group_rule) for ``DataSplits``.

    With ``cfg.group_reference_ir`` the D-groups come from the counts a split with that imbalance
    ratio would have (LIFT fixes CIFAR-100-LT's groups this way for every ratio); otherwise from the
    actual training counts.
    """
    if cfg.group_reference_ir is not None:
        counts = longtail_counts(n_max, len(train_counts), cfg.group_reference_ir, cfg.profile)
        return counts, f"reference_ir={cfg.group_reference_ir:g}"
    return np.asarray(train_counts, dtype=np.int64).copy(), "train_counts"


def first_per_class(labels: np.ndarray, limit: int | None) -> np.ndarray:
    """Sorted indices of the first ``limit`` items of each class in ``labels`` order (all if None)."""
    labels = np.asarray(labels, dtype=np.int64)
    if limit is None:
        return np.arange(len(labels))
    keep = [np.flatnonzero(labels == c)[:limit] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)
