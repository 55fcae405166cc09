"""Image folders with OLTR-style split files: ImageNet-LT, Places-LT, iNaturalist 2018, or any
``txt_split`` data set.

A split file holds one ``relative/path label`` line per image (paths relative to the data root;
blank lines and lines starting with ``#`` are skipped). Class names come from ``cfg.classnames``
(``trainables.data.names``: one per line, LIFT's ``<id> <name>`` lines or iNaturalist's
categories.json), else from the list shipped for the benchmark, else are placeholders ``class_<i>``. These benchmarks ship a long-tailed train split, so
``imbalance_ratio`` and ``profile`` do not apply: the train split is used as is, and val is the
official (balanced) val split. iNaturalist 2018 has no separate test split; like OLTR, LIFT and GLA
we report on its val split, which is then also the default val split: ``meta['val_equals_test']``
says so, and selecting on val then selects on test. Give ``dataset.val_split`` a held-out file
for honest model selection there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from trainables.config import DatasetConfig, RuntimeConfig
from trainables.data import DATASETS, candidate_roots
from trainables.data.longtail import first_per_class, group_reference
from trainables.data.names import read_class_names_file, shipped_path

if TYPE_CHECKING:  # torch and PIL are imported by the trials that load images, not by the driver
    import torch

    from trainables.data.base import DataSplits


@dataclass(frozen=True)
class SplitFiles:
    """Default split file names of a benchmark (relative to its root)."""

    train: str
    val: str
    test: str


LAYOUTS = {
    "txt_split": SplitFiles("train.txt", "val.txt", "test.txt"),
    "imagenet_lt": SplitFiles("ImageNet_LT_train.txt", "ImageNet_LT_val.txt", "ImageNet_LT_test.txt"),
    "places_lt": SplitFiles("Places_LT_train.txt", "Places_LT_val.txt", "Places_LT_test.txt"),
    "inat2018": SplitFiles("iNaturalist18_train.txt", "iNaturalist18_val.txt", "iNaturalist18_val.txt"),
}


@dataclass(frozen=True)
class SplitList:
    """The parsed lines of one split file."""

    file: Path
    paths: list[str]
    labels: np.ndarray
    line_numbers: np.ndarray


def read_split_file(path: Path) -> SplitList:
    """Parse ``relative/path label`` lines; ValueError naming the file and line when malformed."""
    paths, labels, lines = [], [], []
    with open(path, encoding="utf-8") as f:
        for n, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.rsplit(None, 1)  # the path may contain spaces; the label is the last token
            if len(parts) != 2 or not parts[1].isdigit():
                raise ValueError(f"{path}, line {n}: expected '<relative/path> <integer label>', got {line!r}")
            paths.append(parts[0])
            labels.append(int(parts[1]))
            lines.append(n)
    return SplitList(path, paths, np.asarray(labels, dtype=np.int64), np.asarray(lines, dtype=np.int64))


class _ImageFiles:
    """``load`` for LabeledImages: item i of a split file as a uint8 RGB tensor [3, H, W]."""

    def __init__(self, root: Path, split: SplitList) -> None:
        self.root, self.split = root, split

    def describe(self, i: int) -> str:
        """Where item i comes from: the image path and its split file line."""
        return f"{self.root / self.split.paths[i]} ({self.split.file}, line {self.split.line_numbers[i]})"

    def __call__(self, i: int) -> torch.Tensor:
        import torch
        from PIL import Image, UnidentifiedImageError

        path = self.root / self.split.paths[i]
        if not path.is_file():
            raise FileNotFoundError(f"image {path} not found (listed in {self.split.file}, line "
                                    f"{self.split.line_numbers[i]}); check dataset.root")
        try:
            with Image.open(path) as im:
                rgb = np.asarray(im.convert("RGB"))
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"image {path} (listed in {self.split.file}, line {self.split.line_numbers[i]}) "
                             f"cannot be decoded: {e}") from e
        return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()


def _resolve(root: Path, name: str) -> Path:
    path = Path(name).expanduser()
    return path if path.is_absolute() else root / path


def _find_root(cfg: DatasetConfig, runtime: RuntimeConfig, train_file: str) -> Path:
    roots = candidate_roots(cfg, runtime)
    for root in roots:
        if _resolve(root, train_file).is_file():
            return root
    where = ", ".join(str(r) for r in roots) or "(none: set dataset.root, $LTBIAS_DATA or runtime.data_root)"
    raise FileNotFoundError(
        f"{cfg.name}: train split file {train_file!r} not found; looked in: {where}. Put the image folder "
        f"and its split files (lines 'relative/path label'; for the LT benchmarks the OLTR files, "
        f"github.com/zhmiao/OpenLongTailRecognition-OLTR) under dataset.root, or set dataset.train_split")


def read_class_names(cfg: DatasetConfig, root: Path, max_label: int) -> list[str]:
    """Names from ``cfg.classnames`` (any format ``trainables.data.names`` reads; a relative path is
    looked up under the data root), else the benchmark's shipped list, else ``class_<i>``
    placeholders; the class count must cover every label."""
    shipped = shipped_path(cfg.name)
    if cfg.classnames:
        path = _resolve(root, cfg.classnames)
        if not path.is_file():
            raise FileNotFoundError(f"dataset.classnames file {path} not found; give a path (absolute, or "
                                    f"relative to the data root {root}) or leave it unset")
        names = read_class_names_file(path)
        source = f"{path} ({len(names)} names)"
    elif shipped is not None:
        names = read_class_names_file(shipped)
        source = f"the shipped list {shipped.name} ({len(names)} names)"
    else:
        names = [f"class_{i}" for i in range(cfg.num_classes or max_label + 1)]
        source = f"dataset.num_classes={cfg.num_classes}"
    if cfg.num_classes is not None and cfg.num_classes != len(names):
        raise ValueError(f"dataset.num_classes={cfg.num_classes} but {source}; make them agree")
    if max_label >= len(names):
        raise ValueError(f"split files use label {max_label} but {source} gives only {len(names)} classes")
    return names


def build_txt_split(cfg: DatasetConfig, runtime: RuntimeConfig) -> DataSplits:
    """Train / val / test from split files (defaults per benchmark in ``LAYOUTS``)."""
    from trainables.data.base import DataSplits, LabeledImages

    layout = LAYOUTS[cfg.name] if cfg.name in LAYOUTS else LAYOUTS["txt_split"]
    files = SplitFiles(cfg.train_split or layout.train, cfg.val_split or layout.val, cfg.test_split or layout.test)
    root = _find_root(cfg, runtime, files.train)
    lists = {}
    for split, name in (("train", files.train), ("val", files.val), ("test", files.test)):
        path = _resolve(root, name)
        if not path.is_file():
            raise FileNotFoundError(f"{cfg.name}: {split} split file {path} not found; set dataset.{split}_split")
        lists[split] = read_split_file(path)
    max_label = max((int(s.labels.max()) for s in lists.values() if len(s.labels)), default=-1)
    names = read_class_names(cfg, root, max_label)
    C = len(names)

    def subset(split: SplitList, limit: int | None) -> LabeledImages:
        keep = first_per_class(split.labels, limit)
        kept = SplitList(split.file, [split.paths[i] for i in keep], split.labels[keep], split.line_numbers[keep])
        images = _ImageFiles(root, kept)
        return LabeledImages(kept.labels, images, describe=images.describe)

    if lists["val"].file.resolve() == lists["test"].file.resolve():
        # q_hat, per-epoch selection and fitted backdoor weights all read val: it must not be test.
        raise ValueError(f"{cfg.name}: the validation split {lists['val'].file} is also the test split; set "
                         "dataset.val_split to a held-out split file (e.g. images of the training list "
                         "that dataset.train_split leaves out), so that nothing is selected on test")
    train_counts = np.bincount(lists["train"].labels, minlength=C).astype(np.int64)
    group_counts, group_rule = group_reference(cfg, train_counts, int(train_counts.max()))
    return DataSplits(
        train=subset(lists["train"], None),
        val=subset(lists["val"], cfg.limit_per_class),
        test=subset(lists["test"], cfg.limit_per_class),
        class_names=names, train_counts=train_counts, group_counts=group_counts, group_rule=group_rule,
        meta={"source": str(root), "split_files": {k: str(v.file) for k, v in lists.items()},
              "imbalance_ratio": float(train_counts.max() / max(train_counts.min(), 1)),
              "classes_without_training_images": np.flatnonzero(train_counts == 0).tolist()})


for _name in LAYOUTS:
    DATASETS.register(_name)(build_txt_split)
