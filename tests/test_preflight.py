"""Preflight: every model, tag, checkpoint and data-layout problem of a study at once, each naming
its field and the fix, before any trial (exit 2); --skip-data-check skips only the data part."""

from __future__ import annotations

from pathlib import Path

import pytest

from platform.errors import SpecError
from platform.preflight import preflight
from platform.run import main
from platform.plan import make_plan
from platform.studyfile import load_study
from test_data import write_cifar10

CLIP = "{family: open_clip, name: ViT-B-16-quickgelu, pretrained: openai}"


def _study(tmp_path: Path, dataset: str, backbones: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(f"name: pf\nstorage: {tmp_path}/runs\ntracking_uri: sqlite:///{tmp_path}/mlflow.db\n"
                    f"dataset: {dataset}\nbackbones: {backbones}\nfinetune: {{head: cosine}}\n"
                    "method: {name: ce}\n", encoding="utf-8")
    return path


def _plan(tmp_path: Path, dataset: str, backbones: str):
    path = _study(tmp_path, dataset, backbones)
    return make_plan(load_study(path), str(path))


def _problems(tmp_path: Path, dataset: str, backbones: str, check_data: bool = True) -> str:
    plan = _plan(tmp_path, dataset, backbones)
    with pytest.raises(SpecError) as e:
        preflight(plan, check_data=check_data)
    return str(e.value)


def test_unknown_open_clip_model_and_tag_name_the_field_and_the_known_values(tmp_path):
    text = _problems(tmp_path, "{name: toy_lt}", "[{family: open_clip, name: ViT-B-61, pretrained: openai}, "
                     "{family: open_clip, name: ViT-B-16, pretrained: laion2b_s34b_b99k}]", check_data=False)
    assert "backbones.0.name = ViT-B-61: open_clip has no model of this name; did you mean 'ViT-B-16'" in text
    assert "backbones.1.pretrained = laion2b_s34b_b99k" in text and "did you mean 'laion2b_s34b_b88k'" in text


def test_unknown_timm_model_and_missing_checkpoint(tmp_path):
    text = _problems(tmp_path, "{name: toy_lt}", "[{family: timm, name: vit_base_patch16_2240}, "
                     f"{{family: timm, name: vit_tiny_patch16_224, checkpoint: {tmp_path}/nope.safetensors}}]")
    assert "backbones.0.name = vit_base_patch16_2240: timm has no model of this name" in text
    assert f"backbones.1.checkpoint = {tmp_path}/nope.safetensors: no such file" in text


def test_every_problem_is_reported_at_once(tmp_path):
    text = _problems(tmp_path, f"{{name: cifar100_lt, root: {tmp_path}}}",
                     f"[{CLIP}, {{family: open_clip, name: ViT-B-16, pretrained: no_such_tag}}]")
    assert "backbones.1.pretrained = no_such_tag" in text
    assert "dataset.root" in text and "cifar-100-python" in text


def test_cifar_layout_passes_when_the_pickles_are_there(tmp_path):
    root = write_cifar10(tmp_path / "data", per_class=20, test_per_class=2)
    plan = _plan(tmp_path, f"{{name: cifar10_lt, root: {root}, val_per_class: 2}}",
                 "[{family: timm, name: vit_tiny_patch16_224}]")
    preflight(plan)  # no problem
    (root / "cifar-10-batches-py" / "batches.meta").write_bytes(b"not a pickle")
    with pytest.raises(SpecError, match="batches.meta is not a readable CIFAR pickle"):
        preflight(plan)


def _split_root(tmp_path: Path, with_images: bool) -> Path:
    root = tmp_path / "places"
    for split in ("train", "val", "test"):
        lines = [f"{split}/c{c}/{i}.jpg {c}" for c in range(3) for i in range(4)]
        (root / f"Places_LT_{split}.txt").parent.mkdir(parents=True, exist_ok=True)
        (root / f"Places_LT_{split}.txt").write_text("\n".join(lines) + "\n")
        if with_images:
            for line in lines:
                p = root / line.split()[0]
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(b"")
    return root


def test_split_files_and_a_sample_of_their_images_must_be_under_the_root(tmp_path):
    root = _split_root(tmp_path, with_images=False)
    text = _problems(tmp_path, f"{{name: places_lt, root: {root}}}", "[{family: timm, name: vit_tiny_patch16_224}]")
    assert "sampled images of Places_LT_train.txt are missing under the root" in text
    root = _split_root(tmp_path, with_images=True)
    preflight(_plan(tmp_path, f"{{name: places_lt, root: {root}}}", "[{family: timm, name: vit_tiny_patch16_224}]"))


def test_skip_data_check_skips_only_the_data(tmp_path, capsys):
    study = _study(tmp_path, f"{{name: places_lt, root: {tmp_path}}}",
                   "[{family: open_clip, name: ViT-B-16, pretrained: no_such_tag}]")
    assert main([str(study), "--dry-run", "--skip-data-check"]) == 2
    err = capsys.readouterr().err
    assert "no_such_tag" in err and "dataset.root" not in err
    assert main([str(study), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "no_such_tag" in err and "dataset.root" in err
