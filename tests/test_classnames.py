"""Class names: the shipped benchmark lists, the file formats the reader understands, and the
dry-run error for placeholder names where the text tower reads them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from platform.errors import SpecError
from platform.studyfile import parse_study
from trainables.config import DatasetConfig, RuntimeConfig
from trainables.data import build_splits
from trainables.data.names import (CLASSNAMES_DIR, SHIPPED, SHIPPED_COUNTS, placeholder_names,
                                   read_class_names_file)

REPO = Path(__file__).resolve().parents[1]
LT_SPLITS = next((p for p in (REPO.parent / "shared/data/lt-splits", Path("/work/shared/data/lt-splits"))
                  if p.is_dir()), None)


@pytest.mark.parametrize("dataset,first,last", [
    ("imagenet_lt", "tench", "toilet paper"),
    ("places_lt", "airfield", "zen_garden"),
    ("inat2018", "Hermodice carunculata", None),
])
def test_shipped_lists_have_the_benchmark_sizes_and_real_names(dataset, first, last):
    names = read_class_names_file(CLASSNAMES_DIR / SHIPPED[dataset])
    assert len(names) == SHIPPED_COUNTS[dataset] == {"imagenet_lt": 1000, "places_lt": 365, "inat2018": 8142}[dataset]
    assert names[0] == first and (last is None or names[-1] == last)
    assert not any(n.startswith("class_") or n.split()[0].startswith("n0") for n in names)


@pytest.mark.skipif(LT_SPLITS is None, reason="the benchmarks' index files (shared/data/lt-splits) are not here")
@pytest.mark.parametrize("dataset,source", [("imagenet_lt", "ImageNet_LT/classnames.txt"),
                                            ("places_lt", "Places_LT/classnames.txt"),
                                            ("inat2018", "iNaturalist18/categories.json")])
def test_shipped_lists_are_what_the_real_index_files_give(dataset, source):
    """scripts/make_classnames.py regenerates the shipped files; they must not drift from the source."""
    shipped = (CLASSNAMES_DIR / SHIPPED[dataset]).read_text(encoding="utf-8").splitlines()
    assert shipped == read_class_names_file(LT_SPLITS / source)


def test_reader_understands_lift_id_name_lines(tmp_path):
    (tmp_path / "in.txt").write_text("n01440764 tench\nn01443537 goldfish\nn01484850 great white shark\n")
    (tmp_path / "pl.txt").write_text("airfield airfield\nairplane_cabin airplane_cabin\n")
    assert read_class_names_file(tmp_path / "in.txt") == ["tench", "goldfish", "great white shark"]
    assert read_class_names_file(tmp_path / "pl.txt") == ["airfield", "airplane_cabin"]


def test_reader_keeps_whole_lines_of_a_plain_name_list(tmp_path):
    (tmp_path / "names.txt").write_text("great white shark\ntench\n\nsea lion\n")
    assert read_class_names_file(tmp_path / "names.txt") == ["great white shark", "tench", "sea lion"]


def test_reader_understands_inaturalist_categories_json_in_id_order(tmp_path):
    cats = [{"id": 1, "name": "Pica pica", "genus": "Pica"}, {"id": 0, "name": "Bufo bufo"}]
    (tmp_path / "categories.json").write_text(json.dumps(cats))
    assert read_class_names_file(tmp_path / "categories.json") == ["Bufo bufo", "Pica pica"]
    (tmp_path / "bad.json").write_text(json.dumps([{"id": 0}]))
    with pytest.raises(ValueError, match="'id' and 'name'"):
        read_class_names_file(tmp_path / "bad.json")


def test_benchmark_without_classnames_uses_its_shipped_list(tmp_path):
    for split in ("train", "val", "test"):
        (tmp_path / f"ImageNet_LT_{split}.txt").write_text(f"{split}/a.jpg 0\n{split}/b.jpg 999\n")
    splits = build_splits(DatasetConfig(name="imagenet_lt", root=str(tmp_path)), RuntimeConfig())
    assert len(splits.class_names) == 1000 and splits.class_names[:2] == ["tench", "goldfish"]


def test_placeholder_names_only_for_split_files_without_a_list():
    assert placeholder_names(DatasetConfig(name="txt_split"))
    assert not placeholder_names(DatasetConfig(name="txt_split", classnames="names.txt"))
    assert not any(placeholder_names(DatasetConfig(name=n)) for n in ("imagenet_lt", "cifar100_lt", "toy_lt"))


STUDY = """
name: names
dataset: {{name: txt_split}}
backbones: [{{family: open_clip, name: ViT-B-16, pretrained: openai}}]
finetune: {{head: {head}}}
method: {{name: {method}}}
"""


@pytest.mark.parametrize("head,method", [("text", "la"), ("cosine", "gla"), ("cosine", "gla_train")])
def test_placeholder_names_where_the_text_tower_reads_them_fail_at_dry_run(head, method):
    with pytest.raises(SpecError) as e:
        parse_study(STUDY.format(head=head, method=method))
    assert "dataset.classnames" in str(e.value) and "placeholder class names" in str(e.value)


def test_placeholder_names_are_fine_for_a_cosine_head_and_a_plain_loss():
    parse_study(STUDY.format(head="cosine", method="la"))
