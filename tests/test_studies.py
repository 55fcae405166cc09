"""Every shipped study file validates and dry-runs (the paper's studies with --skip-data-check:
this machine has neither their data nor their weights); the paper studies are the paper's recipe."""

from __future__ import annotations

from pathlib import Path

import pytest

from platform.run import main
from platform.studyfile import load_study

REPO = Path(__file__).resolve().parents[1]
STUDIES = sorted(str(p.relative_to(REPO)) for p in (REPO / "studies").rglob("*.yaml"))
PAPER = [s for s in STUDIES if "/paper/" in s]


def test_the_paper_studies_are_shipped():
    names = {Path(s).name for s in PAPER}
    assert {"cifar100_lt.yaml", "imagenet_lt.yaml", "places_lt.yaml", "inat2018.yaml"} <= names


@pytest.mark.parametrize("study", STUDIES)
def test_shipped_study_validates_and_dry_runs(study, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main([study, "--dry-run", *(["--skip-data-check"] if study in PAPER else [])]) == 0
    out = capsys.readouterr().out
    assert "dry run: nothing was started" in out and "total trials:" in out


@pytest.mark.parametrize("study", PAPER)
def test_paper_study_is_the_papers_recipe(study, monkeypatch):
    monkeypatch.chdir(REPO)
    s = load_study(study)
    # the three backbones with the tags the paper's code loads (JiahaoChen1/Pre-train-Imbalance test.py)
    assert [(b.name, b.pretrained) for b in s.backbones] == [
        ("ViT-B-16-quickgelu", "openai"), ("ViT-B-16", "laion2b_s34b_b88k"), ("ViT-B-16-quickgelu", "metaclip_400m")]
    assert s.grid["backbone_index"] == [0, 1, 2]  # single-model baselines on every backbone
    assert {"ce", "la", "gla", "backdoor"} <= set(s.grid["method.name"])
    assert len(s.seeds) >= 3
    ft = s.finetune
    assert (ft.peft, ft.head, ft.cosine_scale, ft.lr, ft.batch_size) == ("adaptformer", "text", 25, 0.01, 128)
    assert (ft.eval_transform, ft.test_crops, ft.crop_expand) == ("lift", 5, 24)
    assert ft.prompt_templates == ["a photo of a {}."]
    lift = [p for p in s.published if p.method == "la" and p.value is not None]
    assert lift and all(0.5 <= p.value <= 0.9 for p in lift)


@pytest.mark.parametrize("study", PAPER)
def test_paper_study_with_a_bad_tag_fails_fast_naming_it(study, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main([study, "--dry-run", "--skip-data-check", "--set", "backbones.0.pretrained=no_such_tag"]) == 2
    err = capsys.readouterr().err
    assert "backbones.0.pretrained = no_such_tag" in err and "open_clip has no pretrained tag" in err


@pytest.mark.parametrize("study", PAPER)
def test_paper_study_with_a_wrong_data_root_fails_fast_naming_it(study, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main([study, "--dry-run", "--set", f"dataset.root={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert f"dataset.root = {tmp_path}" in err and "not found" in err
