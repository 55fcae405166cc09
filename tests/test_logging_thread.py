"""MLflowStudyCallback logs trials off Tune's event loop, in Tune's order; flush surfaces errors."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
from mlflow import MlflowClient

from plans import plan_from_text
from platform.tracking import MLflowStudyCallback
from test_tracking import STUDY, _trial_config


@pytest.fixture()
def plan(tmp_path):
    return plan_from_text(STUDY, tmp_path)


def _trial(plan, trial_id: str) -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, config=_trial_config(plan, 0), checkpoint=None,
                           num_failures=0)


def test_trial_logging_runs_on_one_other_thread_in_order(plan, tmp_path):
    callback = MLflowStudyCallback(plan.tracking_uri, plan, str(tmp_path / "storage" / "x"))
    callback.setup()
    threads = set()
    log_result = callback.tracker.log_result

    def recording(run_id, result):
        threads.add(threading.current_thread().name)
        log_result(run_id, result)

    callback.tracker.log_result = recording
    trial = _trial(plan, "dddd0001")
    callback.on_trial_start(0, [], trial)
    for epoch in (1, 2, 3):
        callback.on_trial_result(0, [], trial, {"epoch": epoch, "val/acc": 0.1 * epoch})
    callback.on_trial_complete(0, [], trial)
    callback.flush()
    assert len(threads) == 1 and threading.current_thread().name not in threads
    run_id = callback.get_state()["trial_runs"]["dddd0001"]
    client = MlflowClient(plan.tracking_uri)
    assert [m.step for m in client.get_metric_history(run_id, "val/acc")] == [1, 2, 3]
    assert client.get_run(run_id).info.status == "FINISHED"


def test_a_failed_logging_call_is_raised_by_flush(plan, tmp_path):
    callback = MLflowStudyCallback(plan.tracking_uri, plan, str(tmp_path / "storage" / "x"))
    callback.setup()

    def broken(run_id, result):
        raise ConnectionError("tracking store went away")

    callback.tracker.log_result = broken
    trial = _trial(plan, "eeee0001")
    callback.on_trial_start(0, [], trial)
    callback.on_trial_result(0, [], trial, {"epoch": 1, "val/acc": 0.5})  # returns at once
    with pytest.raises(ConnectionError, match="went away"):
        callback.flush()
    callback.flush()  # reported once
