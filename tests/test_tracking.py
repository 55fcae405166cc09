"""StudyTracker / MLflowStudyCallback: run hierarchy, per-epoch metrics, reuse on retry and resume."""

from __future__ import annotations

import time

import pytest
from mlflow import MlflowClient

from plans import plan_from_text
from platform.searcher import META_KEY
from platform.tracking import (MLflowStudyCallback, StudyTracker, check_tracking, finite_metrics,
                               flatten, result_step)

STUDY = """
name: tracking-test
dataset: {{name: toy_lt, imbalance_ratio: 10, val_per_class: 5,
          world: {{num_classes: 5, n_max: 40, test_per_class: 10, image_size: 16}}}}
backbones: [{{family: toy, pretrain: {{corpus_size: 1000, epochs: 3, width: 32, depth: 1}}}}]
finetune: {{peft: linear, head: linear, epochs: 3, batch_size: 64, augment: false}}
grid:
  method.name: [ce, la]
storage: {tmp}/storage
tracking_uri: sqlite:///{tmp}/mlflow.db
"""


@pytest.fixture()
def plan(tmp_path):
    return plan_from_text(STUDY, tmp_path)


def _trial_config(plan, cell_index: int, seed: int = 0) -> dict:
    cell = plan.cells[cell_index]
    return dict(cell.base_config, seed=seed,
                **{META_KEY: {"cell": cell.id, "stage": 1, "optuna_trial": None, "seed": seed,
                              "group": 0}})


def _runs(plan) -> list:
    client = MlflowClient(plan.tracking_uri)
    exp = client.get_experiment_by_name(plan.study.name)
    return client.search_runs([exp.experiment_id], max_results=1000)


def _tracker(plan, tmp_path, resume: bool = False) -> StudyTracker:
    return StudyTracker(plan.tracking_uri, plan, str(tmp_path / "storage" / plan.study.name),
                        resume=resume)


def test_trial_runs_nest_under_cell_runs_under_one_study_run(plan, tmp_path):
    tracker = _tracker(plan, tmp_path)
    study_run = tracker.start_study()
    t0 = tracker.trial_run("aaaa0001", _trial_config(plan, 0))
    t1 = tracker.trial_run("aaaa0002", _trial_config(plan, 1))
    runs = {r.info.run_id: r for r in _runs(plan)}
    assert len(runs) == 5  # study, 2 cells, 2 trials
    cell_of = {r.data.tags["ltbias.cell"]: r.info.run_id for r in runs.values()
               if r.data.tags.get("ltbias.level") == "cell"}
    assert runs[t0].data.tags["mlflow.parentRunId"] == cell_of["c00"]
    assert runs[t1].data.tags["mlflow.parentRunId"] == cell_of["c01"]
    assert {runs[c].data.tags["mlflow.parentRunId"] for c in cell_of.values()} == {study_run}
    assert runs[cell_of["c01"]].data.params == {"method.name": "la"}
    params = runs[t1].data.params
    assert params["method.name"] == "la" and params["finetune.epochs"] == "3"
    assert not any(k.startswith(META_KEY + ".") for k in params)  # meta goes to tags, not params
    assert runs[t1].data.tags["ltbias.trial_id"] == "aaaa0002"
    study = runs[study_run]
    assert study.data.tags["ltbias.spec_hash"] == plan.spec_hash
    assert study.data.params["name"] == "tracking-test"
    client = MlflowClient(plan.tracking_uri)
    assert [a.path for a in client.list_artifacts(study_run, "spec")] == ["spec/study.yaml"]


def test_metrics_are_logged_per_epoch_and_a_replayed_step_is_not_repeated(plan, tmp_path):
    tracker = _tracker(plan, tmp_path)
    run_id = tracker.trial_run("bbbb0001", _trial_config(plan, 0))
    for epoch in (1, 2, 3):
        tracker.log_result(run_id, {"epoch": epoch, "val/acc": 0.1 * epoch, "train/loss": 1.0 / epoch,
                                    "training_iteration": epoch, "timestamp": time.time(),
                                    "val/d_few": float("nan"), "config": {"x": 1}})
    tracker.log_result(run_id, {"epoch": 2, "val/acc": 0.9})  # replay after restoring epoch 1
    tracker.log_result(run_id, {"epoch": 3, "val/acc": 0.3, "test/acc": 0.25})  # final report
    client = MlflowClient(plan.tracking_uri)
    history = client.get_metric_history(run_id, "val/acc")
    assert [(m.step, round(m.value, 6)) for m in history] == [(1, 0.1), (2, 0.2), (3, 0.3)]
    assert [m.step for m in client.get_metric_history(run_id, "test/acc")] == [3]
    metrics = client.get_run(run_id).data.metrics
    assert "val/d_few" not in metrics and "timestamp" not in metrics  # NaN and Tune bookkeeping


def test_resumed_tracker_reuses_the_study_cell_and_trial_runs(plan, tmp_path):
    first = _tracker(plan, tmp_path)
    study_run = first.start_study()
    run_id = first.trial_run("cccc0001", _trial_config(plan, 0))
    first.log_result(run_id, {"epoch": 1, "val/acc": 0.2})
    first.end(run_id, "FAILED")
    before = len(_runs(plan))

    again = _tracker(plan, tmp_path, resume=True)
    assert again.start_study() == study_run
    assert again.trial_run("cccc0001", _trial_config(plan, 0)) == run_id
    again.log_result(run_id, {"epoch": 1, "val/acc": 0.5})  # already logged before the restart
    again.log_result(run_id, {"epoch": 2, "val/acc": 0.6})
    assert len(_runs(plan)) == before
    client = MlflowClient(plan.tracking_uri)
    assert [m.step for m in client.get_metric_history(run_id, "val/acc")] == [1, 2]
    assert client.get_run(run_id).info.status == "RUNNING"

    fresh = _tracker(plan, tmp_path, resume=False)
    assert fresh.start_study() != study_run  # a new execution gets its own study run


def test_callback_state_round_trip_keeps_the_study_run(plan, tmp_path):
    callback = MLflowStudyCallback(plan.tracking_uri, plan, str(tmp_path / "storage" / "x"))
    callback.setup()
    state = callback.get_state()
    restored = MLflowStudyCallback(plan.tracking_uri, plan, str(tmp_path / "storage" / "x"))
    restored.set_state(state)
    restored.setup()
    assert restored.study_run_id == callback.study_run_id
    assert len([r for r in _runs(plan) if r.data.tags.get("ltbias.level") == "study"]) == 1


def test_long_and_many_params_are_truncated_and_batched(plan, tmp_path):
    tracker = _tracker(plan, tmp_path)
    run_id = tracker.start_study()
    many = {f"p{i:03d}": i for i in range(250)} | {"long": "x" * 7000}
    tracker.log_params(run_id, many)
    params = MlflowClient(plan.tracking_uri).get_run(run_id).data.params
    assert all(f"p{i:03d}" in params for i in range(250))
    assert len(params["long"]) == 6000


def test_param_names_mlflow_refuses_are_made_valid(plan, tmp_path):
    tracker = _tracker(plan, tmp_path)
    run_id = tracker.start_study()
    tracker.log_params(run_id, {"backbones.*.pretrain.imbalance_ratio": 2})
    params = MlflowClient(plan.tracking_uri).get_run(run_id).data.params
    assert params["backbones._.pretrain.imbalance_ratio"] == "2"


def test_flatten_result_step_and_finite_metrics():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "pool": [{"n": "x"}]}) == {
        "a.b": 1, "a.c": [1, 2], "pool.0.n": "x"}
    assert result_step({"epoch": 4, "training_iteration": 9}) == 4
    assert result_step({"training_iteration": 9}) == 9
    assert finite_metrics({"val/acc": 0.5, "x": float("inf"), "done": True, "flag": True,
                           "pid": 3, "name": "s"}) == {"val/acc": 0.5}


def test_unreachable_tracking_server_is_reported_with_its_uri():
    with pytest.raises(ConnectionError, match="127.0.0.1:9"):
        check_tracking("http://127.0.0.1:9")
