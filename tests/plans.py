"""Plans from study text, for the tests of the execution engine's pieces."""

from __future__ import annotations

from pathlib import Path

from platform.plan import Plan, make_plan
from platform.studyfile import load_study


def plan_from_text(text: str, tmp_path: Path) -> Plan:
    """The plan of study ``text`` (``{tmp}`` filled with ``tmp_path``), written to a file as a user would."""
    path = tmp_path / "study.yaml"
    path.write_text(text.format(tmp=tmp_path), encoding="utf-8")
    return make_plan(load_study(path), str(path))
