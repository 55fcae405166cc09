"""Downstream data sets: a registry of builders ``(DatasetConfig, RuntimeConfig) -> DataSplits``.

Registered here: cifar10_lt, cifar100_lt (``cifar.py``), txt_split, imagenet_lt, places_lt,
inat2018 (``txt_split.py``). ``toy_lt`` lives in ``trainables.world.data`` and is imported on
first use.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from trainables.config import DatasetConfig, RuntimeConfig
from trainables.registry import Registry

if TYPE_CHECKING:
    from trainables.data.base import DataSplits, LabeledImages

DatasetBuilder = Callable[[DatasetConfig, RuntimeConfig], "DataSplits"]
DATASETS: Registry[DatasetBuilder] = Registry("dataset")

# Builders living outside this package, imported when first asked for (keeps the toy world's
# dependencies out of a CIFAR trial and avoids an import cycle with trainables.world).
_LAZY_BUILDERS = {"toy_lt": "trainables.world.data"}

DATA_ENV = "LTBIAS_DATA"


def candidate_roots(cfg: DatasetConfig, runtime: RuntimeConfig) -> list[Path]:
    """Folders a builder may read ``cfg.name`` from, in order of preference.

    ``cfg.root`` alone when set; otherwise ``$LTBIAS_DATA/<name>``, ``$LTBIAS_DATA``, then
    ``runtime.data_root/<name>``, ``runtime.data_root``. A builder takes the first one holding its
    files and names all of them when none does.
    """
    if cfg.root:
        return [Path(cfg.root).expanduser()]
    roots: list[Path] = []
    for base in (os.environ.get(DATA_ENV), runtime.data_root):
        if base:
            base_path = Path(base).expanduser()
            roots += [base_path / cfg.name, base_path]
    return roots


def build_splits(cfg: DatasetConfig, runtime: RuntimeConfig) -> DataSplits:
    """Build the train / val / test splits of the data set ``cfg.name``."""
    module = _LAZY_BUILDERS.get(cfg.name)
    if module is not None and cfg.name not in DATASETS:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ImportError(f"dataset {cfg.name!r} is provided by {module}, which failed to import: "
                              f"{e}") from e
        if cfg.name not in DATASETS:
            raise KeyError(f"{module} imported but did not register dataset {cfg.name!r}")
    return DATASETS.get(cfg.name)(cfg, runtime)


def dataset_names() -> list[str]:
    """Every data set name a config may use (registered or importable on demand)."""
    return sorted(set(DATASETS.names()) | set(_LAZY_BUILDERS))


def __getattr__(name: str) -> Any:
    """``DataSplits`` and ``LabeledImages`` (``trainables.data.base``), imported on first use: they
    import torch, which validating a study (``dataset_names``) does not need."""
    if name in ("DataSplits", "LabeledImages"):
        from trainables.data import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Importing the builder modules registers them; they need DATASETS, defined above.
from trainables.data import cifar as _cifar  # noqa: E402,F401
from trainables.data import txt_split as _txt_split  # noqa: E402,F401

__all__ = ["DATASETS", "DataSplits", "LabeledImages", "build_splits", "candidate_roots",
           "dataset_names"]
