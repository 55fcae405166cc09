"""Class names: the files a data set's names come from, and the lists shipped for the benchmarks.

``read_class_names_file(path)`` understands
- iNaturalist's ``categories.json``: a list of objects with ``id`` and ``name``; names in id order;
- LIFT's ``classnames.txt`` lines ``<id> <name>`` (the name is everything after the first space),
  recognised when every line's first token is a WordNet id (``n01440764 tench``, ImageNet-LT) or the
  rest of the line repeats it (``airfield airfield``, Places-LT);
- otherwise one name per line.
Blank lines are skipped. ``SHIPPED`` are the lists under ``trainables/data/classnames/``, derived
from the benchmarks' real index files by ``scripts/make_classnames.py``; a benchmark data set
without ``dataset.classnames`` uses its shipped list.

Placeholder names (``class_<i>``) are what a split-file data set gets with no list at all. They are
fine for a linear or cosine head trained from scratch and useless wherever the text tower reads them
(a text-initialised head, zero-shot logits, q_hat, the P-groups): ``placeholder_names(cfg)`` says
in advance, without reading data, whether a configuration will end up with them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from trainables.config import DatasetConfig

CLASSNAMES_DIR = Path(__file__).resolve().parent / "classnames"
SHIPPED = {"imagenet_lt": "imagenet_lt.txt", "places_lt": "places_lt.txt", "inat2018": "inat2018.txt"}
SHIPPED_COUNTS = {"imagenet_lt": 1000, "places_lt": 365, "inat2018": 8142}
# Data sets whose builder reads names from the data itself (CIFAR meta) or generates them (toy world).
NAMES_FROM_DATA = {"cifar10_lt", "cifar100_lt", "toy_lt"}

_WNID = re.compile(r"n\d{8}")


def shipped_path(dataset: str) -> Path | None:
    """The shipped class-name file of a benchmark, or None."""
    name = SHIPPED.get(dataset)
    return CLASSNAMES_DIR / name if name else None


def placeholder_names(cfg: DatasetConfig) -> bool:
    """True when this data set will get placeholder names ``class_<i>`` (no list anywhere)."""
    return cfg.classnames is None and cfg.name not in NAMES_FROM_DATA and cfg.name not in SHIPPED


def read_class_names_file(path: Path) -> list[str]:
    """Class names from ``path`` in any of the formats of the module docstring."""
    path = Path(path)
    if path.suffix == ".json":
        return _read_categories_json(path)
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    pairs = [ln.split(None, 1) for ln in lines]
    if lines and all(len(p) == 2 for p in pairs) and (
            all(_WNID.fullmatch(p[0]) for p in pairs) or all(p[0] == p[1] for p in pairs)):
        return [p[1] for p in pairs]
    return lines


def _read_categories_json(path: Path) -> list[str]:
    try:
        cats = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"dataset.classnames {path} is not valid JSON ({e}); give iNaturalist's "
                         f"categories.json or a text file with one name per line") from e
    if not isinstance(cats, list) or not all(isinstance(c, dict) and "id" in c and "name" in c for c in cats):
        raise ValueError(f"dataset.classnames {path}: expected a list of objects with 'id' and 'name' "
                         f"(iNaturalist's categories.json)")
    by_id = {int(c["id"]): str(c["name"]) for c in cats}
    if sorted(by_id) != list(range(len(cats))):
        raise ValueError(f"dataset.classnames {path}: category ids are not 0..{len(cats) - 1}")
    return [by_id[i] for i in range(len(cats))]
