"""CIFAR-10-LT and CIFAR-100-LT from the standard CIFAR "python" pickle folders.

The folders are read exactly as torchvision's ``CIFAR10`` / ``CIFAR100`` read them (pickle with
``encoding='latin1'``, keys ``data`` [N, 3072] uint8 and ``labels`` / ``fine_labels``), so a folder
torchvision downloaded works as is. The long-tailed train split follows ``longtail_counts`` over the
classes in their natural order; the balanced validation split comes from training images the
long-tailed subset left unused, so the train split is exactly the benchmark's (CIFAR-100-LT: 10,847 /
12,608 / 19,573 images at IR 100 / 50 / 10) and a head class that uses all its images has fewer
validation images or none (``validation_counts``: class 0 of CIFAR-100-LT has none at any ratio,
class 1 has 12 at IR 10); the test split is the official test batch.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from trainables.config import DatasetConfig, RuntimeConfig
from trainables.data import DATASETS, candidate_roots

if TYPE_CHECKING:  # torch is imported by the trials that load images, not by the driver
    import torch

    from trainables.data.base import DataSplits, LabeledImages
from trainables.data.longtail import (first_per_class, group_reference, longtail_counts,
                                      longtail_indices, validation_counts)


@dataclass(frozen=True)
class CifarFormat:
    """File layout of one CIFAR variant."""

    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str
    num_classes: int
    url: str

    @property
    def files(self) -> tuple[str, ...]:
        """Every file the folder must hold."""
        return (*self.train_files, self.test_file, self.meta_file)


CIFAR10 = CifarFormat("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
                      "batches.meta", "labels", "label_names", 10,
                      "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz")
CIFAR100 = CifarFormat("cifar-100-python", ("train",), "test", "meta", "fine_labels", "fine_label_names", 100,
                       "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz")


class _ArrayImages:
    """``load`` for LabeledImages: row i of a uint8 [N, 3, H, W] array as a tensor (picklable for
    DataLoader workers, unlike a lambda)."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def __call__(self, i: int) -> torch.Tensor:
        import torch  # imported by a trial, not by the driver that validates a study

        return torch.from_numpy(self.images[i].copy())  # copy: transforms must not write into the split


class _Describe:
    """``describe`` for LabeledImages: the batch file and the row an item came from."""

    def __init__(self, source: str, rows: np.ndarray) -> None:
        self.source, self.rows = source, rows

    def __call__(self, i: int) -> str:
        return f"{self.source} row {int(self.rows[i])}"


def _subset(x: np.ndarray, y: np.ndarray, idx: np.ndarray, source: str) -> LabeledImages:
    """The rows ``idx`` of (x, y) as a split (only those rows are kept in memory)."""
    from trainables.data.base import LabeledImages

    return LabeledImages(y[idx], _ArrayImages(x[idx]), describe=_Describe(source, idx))


def locate_folder(fmt: CifarFormat, roots: list[Path]) -> Path:
    """The first of ``roots`` / ``roots/<fmt.folder>`` holding every file of ``fmt``."""
    tried = []
    for root in roots:
        for folder in (root / fmt.folder, root):
            tried.append(folder)
            if all((folder / f).is_file() for f in fmt.files):
                return folder
    where = ", ".join(str(p) for p in tried) or "(no folder: set dataset.root, $LTBIAS_DATA or runtime.data_root)"
    raise FileNotFoundError(
        f"CIFAR folder {fmt.folder!r} with files {', '.join(fmt.files)} not found; looked in: {where}. "
        f"Download and unpack {fmt.url} (or torchvision.datasets.CIFAR{fmt.num_classes}(root, download=True)) "
        f"and point dataset.root at the folder that contains {fmt.folder}/")


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="latin1")
    except Exception as e:  # any unpickling failure means the file is not a CIFAR batch
        raise ValueError(f"{path} is not a readable CIFAR pickle ({type(e).__name__}: {e}); "
                         f"re-download the data set") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, expected a dict; re-download the data set")
    return obj


def read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 3, 32, 32] and labels int64 [N] of one CIFAR batch file."""
    batch = _unpickle(path)
    missing = [k for k in ("data", label_key) if k not in batch]
    if missing:
        raise ValueError(f"{path} lacks key(s) {missing}; found {sorted(batch)}. Is this the right CIFAR variant?")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 [N, 3072]")
    if labels.shape != (len(data),):
        raise ValueError(f"{path}: {len(labels)} labels for {len(data)} images")
    return data.reshape(-1, 3, 32, 32), labels


def read_class_names(path: Path, names_key: str, num_classes: int) -> list[str]:
    """Class names from the CIFAR meta file."""
    meta = _unpickle(path)
    names = meta.get(names_key)
    if names is None or len(names) != num_classes:
        raise ValueError(f"{path}: expected {num_classes} names under {names_key!r}, "
                         f"found {None if names is None else len(names)}")
    return [str(n) for n in names]


def build_cifar_lt(fmt: CifarFormat, cfg: DatasetConfig, runtime: RuntimeConfig) -> DataSplits:
    """The long-tailed CIFAR splits described in the module docstring."""
    from trainables.data.base import DataSplits

    C = fmt.num_classes
    if cfg.num_classes not in (None, C):
        raise ValueError(f"dataset.num_classes={cfg.num_classes} but {cfg.name} has {C} classes; "
                         f"leave it unset")
    folder = locate_folder(fmt, candidate_roots(cfg, runtime))
    names = read_class_names(folder / fmt.meta_file, fmt.names_key, C)
    parts = [read_batch(folder / f, fmt.label_key) for f in fmt.train_files]
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    x_test, y_test = read_batch(folder / fmt.test_file, fmt.label_key)
    for split, y in (("train", y_train), ("test", y_test)):
        if len(y) and (y.min() < 0 or y.max() >= C):
            raise ValueError(f"{folder}: {split} labels span [{y.min()}, {y.max()}], expected [0, {C - 1}]")

    available = np.bincount(y_train, minlength=C)
    n_max = int(available.min())  # 5000 (CIFAR-10) / 500 (CIFAR-100): the benchmark's head count
    counts = longtail_counts(n_max, C, cfg.imbalance_ratio, cfg.profile)
    val_cap = cfg.val_per_class if cfg.limit_per_class is None else min(cfg.val_per_class, cfg.limit_per_class)
    val_n = validation_counts(counts, available, val_cap)
    train_idx, val_idx = longtail_indices(y_train, counts, cfg.split_seed, val_n)
    test_idx = first_per_class(y_test, cfg.limit_per_class)

    train_src = f"{folder}/{','.join(fmt.train_files)}"
    group_counts, group_rule = group_reference(cfg, counts, n_max)
    return DataSplits(
        train=_subset(x_train, y_train, train_idx, train_src),
        val=_subset(x_train, y_train, val_idx, train_src),
        test=_subset(x_test, y_test, test_idx, str(folder / fmt.test_file)),
        class_names=names, train_counts=counts, group_counts=group_counts, group_rule=group_rule,
        meta={"source": str(folder), "n_max": n_max,
              "imbalance_ratio": float(counts.max() / counts.min()),
              # classes with fewer validation images than val_per_class: class -> images (head classes)
              "short_validation": {int(c): int(val_n[c]) for c in np.flatnonzero(val_n < val_cap)}})


@DATASETS.register("cifar10_lt")
def cifar10_lt(cfg: DatasetConfig, runtime: RuntimeConfig) -> DataSplits:
    """CIFAR-10-LT (10 classes, 5000 training images per class before sub-sampling)."""
    return build_cifar_lt(CIFAR10, cfg, runtime)


@DATASETS.register("cifar100_lt")
def cifar100_lt(cfg: DatasetConfig, runtime: RuntimeConfig) -> DataSplits:
    """CIFAR-100-LT (100 classes, 500 training images per class before sub-sampling)."""
    return build_cifar_lt(CIFAR100, cfg, runtime)
