"""Every shipped study file validates and dry-runs (the paper's studies included)."""

from __future__ import annotations

from pathlib import Path

import pytest

from platform.run import main

REPO = Path(__file__).resolve().parents[1]
STUDIES = sorted(str(p.relative_to(REPO)) for p in (REPO / "studies").rglob("*.yaml"))


def test_the_paper_studies_are_shipped():
    names = {Path(s).name for s in STUDIES if "/paper/" in s}
    assert {"cifar100_lt.yaml", "imagenet_lt.yaml", "places_lt.yaml", "inat2018.yaml"} <= names


@pytest.mark.parametrize("study", STUDIES)
def test_shipped_study_validates_and_dry_runs(study, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main([study, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run: nothing was started" in out and "total trials:" in out
