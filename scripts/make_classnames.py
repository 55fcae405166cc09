"""Regenerate trainables/data/classnames/*.txt from the benchmarks' real index files.

    python scripts/make_classnames.py [LT_SPLITS_DIR]

LT_SPLITS_DIR (default ../shared/data/lt-splits) holds LIFT's distribution of the index files:
ImageNet_LT/classnames.txt and Places_LT/classnames.txt (``<id> <name>`` lines) and
iNaturalist18/categories.json. Each output has one name per line, line i the name of label i, the
name exactly as LIFT passes it to its prompts (it replaces '_' by ' ' when formatting, as we do).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainables.data.names import CLASSNAMES_DIR, SHIPPED, SHIPPED_COUNTS, read_class_names_file  # noqa: E402

SOURCES = {"imagenet_lt": "ImageNet_LT/classnames.txt", "places_lt": "Places_LT/classnames.txt",
           "inat2018": "iNaturalist18/categories.json"}


def main(argv: list[str]) -> int:
    src = Path(argv[0]) if argv else REPO.parent / "shared" / "data" / "lt-splits"
    if not src.is_dir():
        src = Path("/work/shared/data/lt-splits")
    for dataset, rel in SOURCES.items():
        names = read_class_names_file(src / rel)
        if len(names) != SHIPPED_COUNTS[dataset]:
            raise SystemExit(f"{src / rel}: {len(names)} names, expected {SHIPPED_COUNTS[dataset]}")
        out = CLASSNAMES_DIR / SHIPPED[dataset]
        out.write_text("\n".join(names) + "\n", encoding="utf-8")
        print(f"{out.relative_to(REPO)}: {len(names)} names from {src / rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
