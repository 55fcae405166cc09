"""Crash-safe MLflow records: logging is idempotent against the run's own history, and on resume
MLflow runs are reconciled with Tune's trials (no orphan, no duplicate)."""

from __future__ import annotations

from mlflow import MlflowClient

from test_tracking import STUDY, _runs, _tracker, _trial_config  # noqa: F401 - shared fixtures' helpers
from plans import plan_from_text


def _history(plan, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in MlflowClient(plan.tracking_uri).get_metric_history(run_id, key))


def test_a_resumed_driver_logs_no_step_twice_whatever_the_killed_one_wrote(tmp_path):
    plan = plan_from_text(STUDY, tmp_path)
    first = _tracker(plan, tmp_path)
    first.start_study()
    run = first.trial_run("aaaa0001", _trial_config(plan, 0))
    for epoch in (1, 2, 3):
        first.log_result(run, {"epoch": epoch, "val/acc": 0.1 * epoch, "train/loss": 1.0 / epoch})
    # The killed driver wrote epoch 3's metrics but its bookkeeping tag says epoch 2.
    MlflowClient(plan.tracking_uri).set_tag(run, "ltbias.last_step", "2")

    resumed = _tracker(plan, tmp_path, resume=True)
    assert resumed.trial_run("aaaa0001", _trial_config(plan, 0)) == run
    for epoch in (2, 3, 4):  # the trial replays from its epoch-1 checkpoint
        resumed.log_result(run, {"epoch": epoch, "val/acc": 0.1 * epoch, "train/loss": 1.0 / epoch})
    assert _history(plan, run, "val/acc") == [1, 2, 3, 4]
    assert _history(plan, run, "train/loss") == [1, 2, 3, 4]


def test_reconcile_deletes_runs_of_trials_tune_never_recorded_and_duplicates(tmp_path):
    plan = plan_from_text(STUDY, tmp_path)
    tracker = _tracker(plan, tmp_path)
    tracker.start_study()
    kept = tracker.trial_run("aaaa0001", _trial_config(plan, 0))
    tracker.end(kept, "FINISHED")
    orphan = tracker.trial_run("aaaa0002", _trial_config(plan, 1))  # Tune lost this trial
    # A second run for the kept trial (created by a driver that did not find the first one).
    other = _tracker(plan, tmp_path)
    other.study_run_id = tracker.study_run_id
    duplicate = other.trial_run("aaaa0001", _trial_config(plan, 0))

    deleted = tracker.reconcile(["aaaa0001"])
    assert sorted(deleted) == sorted([orphan, duplicate])
    trials = [r for r in _runs(plan) if r.data.tags.get("ltbias.level") == "trial"]
    assert [r.info.run_id for r in trials] == [kept]  # the FINISHED one stays
