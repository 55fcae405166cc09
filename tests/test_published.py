"""Published numbers (LIFT's, the paper's) stand beside ours in the run's results."""

from __future__ import annotations

import pytest

from platform.errors import SpecError
from platform.published import compare, format_comparison
from platform.spec import Published
from platform.studyfile import parse_study

STUDY = """
name: pub
grid: {backbone_index: [0, 1], method.name: [la, backdoor]}
backbones: [{family: toy}, {family: toy, pretrain: {seed: 1}}]
backdoor: {confounders: 2}
published:
  - {source: LIFT, method: la, where: {backbone_index: 0}, value: 0.783}
"""


def test_published_entries_validate_against_the_grid():
    s = parse_study(STUDY)
    assert s.published[0].value == 0.783
    with pytest.raises(SpecError, match="no cell runs this method"):
        parse_study(STUDY.replace("method: la,", "method: gla,"))
    with pytest.raises(SpecError, match="must be a grid axis"):
        parse_study(STUDY.replace("backbone_index: 0}", "backbone_index: 5}"))
    with pytest.raises(SpecError, match="exactly one of value"):
        parse_study(STUDY.replace("value: 0.783", "value: 0.7, min_gain: 0.01"))


def test_published_numbers_do_not_change_the_spec_hash():
    assert parse_study(STUDY).spec_hash() == parse_study(STUDY.replace("0.783", "0.5")).spec_hash()


def test_compare_puts_published_beside_ours_and_computes_the_claimed_gain():
    rows = [{"cell": "c0", "label": "b0 la", "kind": "train", "values": {"backbone_index": 0, "method.name": "la"},
             "test/acc": 0.70, "test/acc_std": 0.01},
            {"cell": "c1", "label": "b0 bd", "kind": "ensemble", "values": {"backbone_index": 0, "method.name": "backdoor"},
             "test/acc": 0.76},
            {"cell": "c2", "label": "b1 la", "kind": "train", "values": {"backbone_index": 1, "method.name": "la"},
             "test/acc": 0.73}]
    methods = {"c0": "la", "c1": "backdoor", "c2": "la"}
    entries = [Published(source="LIFT", method="la", where={"backbone_index": 0}, value=0.783),
               Published(source="paper", method="backdoor", where={"backbone_index": 0}, min_gain=0.015)]
    items = compare(entries, rows, methods)
    assert [(i["cell"], i["published"], i["ours"]) for i in items] == [("c0", 0.783, 0.70), ("c1", None, 0.76)]
    assert items[1]["best_single"] == "c2" and items[1]["gain"] == pytest.approx(0.03)
    text = format_comparison(items)
    assert "LIFT: test/acc 78.3; ours 70.0 ± 1.0" in text and "at least +1.5" in text and "gain over c2 +3.0" in text


def test_report_rows_select_on_val_per_cell_and_feed_the_comparison(tmp_path):
    import math
    import statistics

    import pandas as pd

    from platform.report import published_rows
    from plans import plan_from_text

    plan = plan_from_text("storage: {tmp}/runs\ntracking_uri: sqlite:///{tmp}/m.db\n"
                          + STUDY.replace("{", "{{").replace("}", "}}"), tmp_path)
    ids = {c.label: c.id for c in plan.cells}
    la0 = ids["backbone_index=0 method.name=la"]
    trials = pd.DataFrame([
        # two seeds of la on backbone 0, and a stage-1 prerequisite row the report leaves out
        {"cell": la0, "optuna_trial": math.nan, "status": "FINISHED", "seed": 0, "val/acc": 0.70, "test/acc": 0.68},
        {"cell": la0, "optuna_trial": math.nan, "status": "FINISHED", "seed": 1, "val/acc": 0.72, "test/acc": 0.72},
        {"cell": "stage1", "optuna_trial": math.nan, "status": "FINISHED", "seed": 0, "val/acc": 0.9, "test/acc": 0.9},
    ])
    rows = published_rows(plan, trials, "val/acc", "max", {"test/acc"})
    assert [r["cell"] for r in rows] == [la0]
    assert rows[0]["test/acc"] == pytest.approx(0.70) and rows[0]["test/acc_std"] == pytest.approx(statistics.stdev([0.68, 0.72]))
    items = compare(parse_study(STUDY).published, rows, {c.id: c.base_config["method"]["name"] for c in plan.cells})
    assert items[0]["ours"] == pytest.approx(0.70) and items[0]["published"] == 0.783


def test_the_run_results_print_published_beside_ours(tmp_path):
    from platform.plan import StudyOutcome
    from platform.run import format_outcome
    from plans import plan_from_text

    plan = plan_from_text("storage: {tmp}/runs\ntracking_uri: sqlite:///{tmp}/m.db\n"
                          + STUDY.replace("{", "{{").replace("}", "}}"), tmp_path)
    rows = [{"cell": c.id, "label": c.label, "kind": c.kind, "values": dict(c.values), "best_config": {},
             "metric": 0.7, "test/acc": 0.70 + 0.01 * i} for i, c in enumerate(plan.cells)]
    text = format_outcome(StudyOutcome(rows, 0, len(rows), "run", "sqlite:///x"), plan)
    la0 = next(c.id for c in plan.cells if c.label == "backbone_index=0 method.name=la")
    assert f"{la0} backbone_index=0 method.name=la: LIFT: test/acc 78.3; ours 70.0" in text
