"""run_study end to end: Ray Tune (local, 2 CPUs) -> the real trainable -> MLflow and Optuna."""

from __future__ import annotations

import argparse
import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import ray
from mlflow import MlflowClient
from optuna.trial import TrialState
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from platform.execute import CellASHAScheduler, read_execution, run_study, select_rows
from platform.errors import EnvironmentFailure
from platform.paths import REPO_ROOT, open_optuna_storage
from platform.plan import make_plan
from platform.progress import ProgressCallback
from platform.searcher import META_KEY, optuna_study_name
from platform.studyfile import load_study

EPOCHS = 3
STUDY = """
name: execute-test
dataset: {{name: toy_lt, imbalance_ratio: 10, val_per_class: 5,
          world: {{num_classes: 5, n_max: 40, test_per_class: 10, image_size: 16}}}}
backbones: [{{family: toy, pretrain: {{corpus_size: 1000, epochs: 3, width: 32, depth: 1}}}}]
finetune: {{peft: linear, head: linear, epochs: {epochs}, lr: 0.5, batch_size: 64, augment: false}}
grid:
  method.name: [ce, la]
search:
  algorithm: optuna
  num_samples: 3
  space:
    finetune.lr: {{logfloat: [0.01, 1.0]}}
seeds: [0]
max_concurrent: {max_concurrent}
max_failures: 0
runtime: {{num_threads: 1}}
storage: {tmp}/storage
tracking_uri: sqlite:///{tmp}/mlflow.db
"""


def _plan(tmp_path, max_concurrent: int = 2):
    path = tmp_path / "study.yaml"
    path.write_text(STUDY.format(tmp=tmp_path, epochs=EPOCHS, max_concurrent=max_concurrent),
                    encoding="utf-8")
    return make_plan(load_study(path), str(path))


def _args(resume: bool = False) -> argparse.Namespace:
    return argparse.Namespace(address=None, storage=None, tracking_uri=None, max_concurrent=None,
                              resume=resume)


@pytest.fixture(scope="module")
def local_ray():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def _optuna_study(plan, cell_id: str) -> optuna.Study:
    """The cell's Optuna study of the plan's (latest) execution."""
    execution = read_execution(Path(plan.storage) / plan.study.name)
    return optuna.load_study(study_name=optuna_study_name(plan.study.name, cell_id, execution),
                             storage=open_optuna_storage(plan.optuna_storage))


def _runs_by_level(plan) -> dict[str, list]:
    client = MlflowClient(plan.tracking_uri)
    exp = client.get_experiment_by_name(plan.study.name)
    out: dict[str, list] = {"study": [], "cell": [], "trial": []}
    for run in client.search_runs([exp.experiment_id], max_results=1000):
        out[run.data.tags["ltbias.level"]].append(run)
    return out


_INTERRUPTED_DRIVER = """
import sys, ray
from platform.execute import run_study
from platform.plan import make_plan
from platform.progress import ProgressCallback
from platform.studyfile import load_study
import argparse
plan = make_plan(load_study(sys.argv[1]), sys.argv[1])
ray.init(num_cpus=2, include_dashboard=False)
run_study(plan, argparse.Namespace(address=None, resume=False), progress_interval_s=0.2)
"""


@pytest.mark.slow
def test_interrupted_study_resumes_without_duplicate_runs_or_optuna_trials(tmp_path):
    plan = _plan(tmp_path, max_concurrent=1)
    log = tmp_path / "storage" / plan.study.name / "progress.log"
    driver = subprocess.Popen([sys.executable, "-c", _INTERRUPTED_DRIVER, plan.study_path],
                              cwd=REPO_ROOT, env=dict(os.environ, RAY_AUTH_MODE="disabled"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and driver.poll() is None:
            lines = log.read_text().splitlines() if log.exists() else []
            if lines and re.search(r"\] \S+  [2-5]/6 done", lines[-1]):
                break
            time.sleep(0.1)
        driver.send_signal(signal.SIGINT)  # Ctrl-C: Tune stops and saves its state
        driver.wait(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    first = _runs_by_level(plan)
    assert first["study"][0].info.status == "KILLED"
    unfinished = [r for r in first["trial"] if r.info.status != "FINISHED"]
    assert 2 <= 6 - len(unfinished) < 6  # really interrupted mid-study

    outcome = run_study(plan, _args(resume=True))  # starts (and stops) its own local Ray
    runs = _runs_by_level(plan)
    assert [len(runs[k]) for k in ("study", "cell", "trial")] == [1, 2, 6]
    assert all(r.info.status == "FINISHED" for k in runs for r in runs[k])
    assert outcome.study_run_id == first["study"][0].info.run_id
    client = MlflowClient(plan.tracking_uri)
    for run in runs["trial"]:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")]
        assert steps == list(range(1, EPOCHS + 1))
    for cell in plan.cells:
        study = _optuna_study(plan, cell.id)
        assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3


@pytest.mark.slow
def test_two_cells_of_three_optuna_trials_run_into_mlflow_and_optuna(local_ray, tmp_path):
    plan = _plan(tmp_path)
    assert plan.total_trials == 6
    sigint = signal.getsignal(signal.SIGINT)
    start = time.monotonic()
    outcome = run_study(plan, _args(), progress_interval_s=1.0)
    wall = time.monotonic() - start
    print(f"\n2 cells x 3 Optuna trials x {EPOCHS} epochs: {wall:.1f} s wall")
    # Tune's handler does not outlive the study: a second study in this process still gets Ctrl-C
    assert signal.getsignal(signal.SIGINT) is sigint

    assert (outcome.total_trials, outcome.failed_trials) == (6, 0)
    runs = _runs_by_level(plan)
    assert [len(runs[k]) for k in ("study", "cell", "trial")] == [1, 2, 6]
    study_run = runs["study"][0]
    assert study_run.info.run_id == outcome.study_run_id and study_run.info.status == "FINISHED"
    cells = {r.data.tags["ltbias.cell"]: r for r in runs["cell"]}
    assert {r.data.tags["mlflow.parentRunId"] for r in cells.values()} == {study_run.info.run_id}
    client = MlflowClient(plan.tracking_uri)
    for trial in runs["trial"]:
        cell = cells[trial.data.tags["ltbias.cell"]]
        assert trial.data.tags["mlflow.parentRunId"] == cell.info.run_id
        assert trial.info.status == "FINISHED"
        assert trial.data.params["method.name"] == cell.data.params["method.name"]
        history = client.get_metric_history(trial.info.run_id, "val/acc")
        assert [m.step for m in history] == list(range(1, EPOCHS + 1))
        assert "test/acc" in trial.data.metrics
        # the trainable's files sit at the run's artifact root: one level deep in the UI
        assert {a.path for a in client.list_artifacts(trial.info.run_id)} >= {
            "per_class.parquet", "logits.parquet"}

    for cell in plan.cells:
        study = _optuna_study(plan, cell.id)
        complete = study.get_trials(states=(TrialState.COMPLETE,))
        assert len(complete) == 3 and len(study.trials) == 3
        # Optuna was told what the trials measured: the final val/acc logged to MLflow
        logged = sorted(r.data.metrics["val/acc"] for r in runs["trial"]
                        if r.data.tags["ltbias.cell"] == cell.id)
        assert sorted(t.value for t in complete) == pytest.approx(logged)

    rows = {r["cell"]: r for r in outcome.rows}
    for cell in plan.cells:
        row = rows[cell.id]
        best = max(t.value for t in _optuna_study(plan, cell.id).trials)
        assert row["metric"] == pytest.approx(best) and row["val/acc"] == pytest.approx(best)
        assert set(row["best_config"]) == {"finetune.lr"} and "test/acc" in row
        assert cells[cell.id].data.tags["ltbias.cell"] == cell.id
    progress = (tmp_path / "storage" / plan.study.name / "progress.log").read_text()
    assert "6/6 done" in progress.splitlines()[-1]

    # Resuming the finished study reruns nothing and opens no new run.
    again = run_study(plan, _args(resume=True))
    after = _runs_by_level(plan)
    assert [len(after[k]) for k in ("study", "cell", "trial")] == [1, 2, 6]
    assert again.study_run_id == outcome.study_run_id
    assert {r["cell"]: r["metric"] for r in again.rows} == {r["cell"]: r["metric"] for r in outcome.rows}
    for cell in plan.cells:
        study = _optuna_study(plan, cell.id)
        assert len(study.trials) == 3

    with pytest.raises(ValueError, match="--resume"):  # a second fresh run would mix the two
        run_study(plan, _args())


def test_unreachable_tracking_server_fails_before_any_trial(tmp_path):
    plan = _plan(tmp_path)
    plan.tracking_uri = "http://127.0.0.1:9"
    was_running = ray.is_initialized()
    with pytest.raises(EnvironmentFailure, match="127.0.0.1:9"):
        run_study(plan, _args())
    assert ray.is_initialized() == was_running  # failed before attaching to Ray
    assert not (tmp_path / "storage" / plan.study.name).exists()


def test_unwritable_storage_fails_before_any_trial(tmp_path):
    plan = _plan(tmp_path)
    (tmp_path / "blocker").write_text("a file, not a folder")
    plan.storage = str(tmp_path / "blocker" / "results")
    with pytest.raises(ValueError, match="--storage .*blocker"):
        run_study(plan, _args())


def test_selection_uses_the_validation_metric_and_seed_group_means(tmp_path):
    plan = _plan(tmp_path)
    cell = plan.cells[0]

    def rec(tid, group, seed, val, test, status="TERMINATED"):
        config = dict(cell.base_config, finetune=dict(cell.base_config["finetune"], lr=0.1 * (group + 1)),
                      **{META_KEY: {"cell": cell.id, "group": group, "optuna_trial": group, "seed": seed}})
        return {"trial_id": tid, "config": config, "status": status,
                "result": {"val/acc": val, "test/acc": test}}

    records = [rec("a", 0, 0, 0.50, 0.90), rec("b", 0, 1, 0.60, 0.95),   # mean val 0.55, great test
               rec("c", 1, 0, 0.70, 0.10), rec("d", 1, 1, 0.0, 0.0, "ERROR"),  # errored seed left out
               rec("e", 2, 0, float("nan"), 0.99)]                            # no metric: ignored
    row = {r["cell"]: r for r in select_rows(plan, records)}[cell.id]
    assert row["selected"] and row["optuna_trial"] == 1
    assert row["metric"] == pytest.approx(0.70) and row["test/acc"] == pytest.approx(0.10)
    assert row["best_config"] == {"finetune.lr": pytest.approx(0.2)}
    assert (row["n_trials"], row["n_failed"], row["n_seeds"]) == (5, 1, 1)
    empty = {r["cell"]: r for r in select_rows(plan, records)}[plan.cells[1].id]
    assert not empty["selected"] and "metric" not in empty


def _fake_trial(tid: str, cell: str, stage: int = 1, status: str = "RUNNING",
                last_result: dict | None = None) -> SimpleNamespace:
    return SimpleNamespace(trial_id=tid, status=status, last_result=last_result or {},
                           config={"finetune": {"epochs": 4},
                                   META_KEY: {"cell": cell, "stage": stage, "group": 0}})


def test_asha_compares_trials_only_within_their_own_cell():
    scheduler = CellASHAScheduler("val/acc", "max", grace_period=1, reduction_factor=2, max_t=4)
    strong = [_fake_trial(f"b{i}", "c01") for i in range(4)]
    weak = _fake_trial("a0", "c00")
    stage1 = _fake_trial("s0", "stage1")
    posthoc = _fake_trial("p0", "c02", stage=2)
    for t in [*strong, weak, stage1, posthoc]:
        scheduler.on_trial_add(None, t)
    for i, t in enumerate(strong):
        scheduler.on_trial_result(None, t, {"training_iteration": 1, "val/acc": 0.9 + i / 100})
    result = {"training_iteration": 1, "val/acc": 0.1}
    # One global ASHA stops the weak cell's first trial: it is far below the other cell's.
    global_asha = ASHAScheduler(metric="val/acc", mode="max", grace_period=1, reduction_factor=2,
                                max_t=4)
    for i, t in enumerate(strong):
        global_asha.on_trial_add(None, t)
        global_asha.on_trial_result(None, t, {"training_iteration": 1, "val/acc": 0.9 + i / 100})
    global_asha.on_trial_add(None, weak)
    assert global_asha.on_trial_result(None, weak, result) == TrialScheduler.STOP
    assert scheduler.on_trial_result(None, weak, result) == TrialScheduler.CONTINUE
    late = _fake_trial("b9", "c01")
    scheduler.on_trial_add(None, late)
    assert scheduler.on_trial_result(None, late, result) == TrialScheduler.STOP
    for t in (stage1, posthoc):
        assert scheduler.on_trial_result(None, t, result) == TrialScheduler.CONTINUE


def test_progress_line_counts_trials_and_shows_best_validation_per_cell(tmp_path):
    stream = io.StringIO()
    progress = ProgressCallback("demo", "val/acc", "max", tmp_path / "progress.log",
                                interval_s=0, total_trials=5, stream=stream)
    trials = [_fake_trial("t1", "c00", status="TERMINATED", last_result={"val/acc": 0.4, "epoch": 4}),
              _fake_trial("t2", "c00", last_result={"val/acc": 0.6, "epoch": 2}),
              _fake_trial("t3", "c01", status="ERROR"),
              _fake_trial("t4", "c01", status="PENDING")]
    progress.on_step_end(1, trials)
    progress.on_step_end(2, trials)  # unchanged: not repeated
    lines = (tmp_path / "progress.log").read_text().splitlines()
    assert len(lines) == 1 and stream.getvalue().strip() == lines[0]
    assert "1/5 done, 1 running, 2 pending, 1 errored" in lines[0]
    assert "best val/acc c00 0.600" in lines[0] and "t2 c00 ep 2/4" in lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("max_failures", [1, 0])
def test_crashing_trial_is_retried_in_its_run_or_marked_failed(local_ray, tmp_path, max_failures):
    text = STUDY.format(tmp=tmp_path, epochs=EPOCHS, max_concurrent=2)
    text = text.replace("max_failures: 0", f"max_failures: {max_failures}")
    text = text.replace("runtime: {num_threads: 1}", "runtime: {num_threads: 1, fault: crash_at_epoch:2}")
    text = text.replace("  method.name: [ce, la]\n", "  method.name: [ce]\n").replace("num_samples: 3", "num_samples: 1")
    path = tmp_path / "study.yaml"
    path.write_text(text, encoding="utf-8")
    plan = make_plan(load_study(path), str(path))
    assert plan.total_trials == 1
    outcome = run_study(plan, _args())
    runs = _runs_by_level(plan)
    assert len(runs["trial"]) == 1  # a retry continues the same run
    run = runs["trial"][0]
    client = MlflowClient(plan.tracking_uri)
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")]
    if max_failures:
        assert outcome.failed_trials == 0 and run.info.status == "FINISHED"
        assert run.data.tags["ltbias.retries"] == "1"
        assert "SimulatedCrash" in run.data.tags["ltbias.last_error"]
        assert steps == list(range(1, EPOCHS + 1))  # resumed from epoch 1: no step twice
    else:
        assert outcome.failed_trials == 1 and run.info.status == "FAILED"
        assert run.data.tags["ltbias.error"].startswith("SimulatedCrash: runtime.fault crash_at_epoch:2")
        assert steps == [1]
        row = outcome.rows[0]
        assert not row["selected"] and row["n_failed"] == 1
        study = _optuna_study(plan, "c00")
        assert [t.state for t in study.trials] == [TrialState.FAIL]


def test_prior_rows_summarise_q_hat_error_per_backbone_once_per_model():
    from platform.execute import prior_rows

    def rec(seed, method, rho, status="TERMINATED"):
        cfg = {"backbone": {"label": "m0", "pretrain": {"imbalance_ratio": 10, "seed": seed, "prior_seed": 0}},
               "dataset": {"world": {"seed": 0}}, "method": {"name": method}}
        return {"status": status, "config": cfg, "result": {"prior/spearman": rho, "prior/tv": 0.1}}

    rows = prior_rows([rec(0, "ce", 0.9), rec(0, "la", 0.9), rec(1000, "la", 0.7), rec(2000, "la", 0.8),
                       rec(3000, "la", 0.1, status="ERROR")])
    assert len(rows) == 1 and rows[0]["backbone"] == "m0 ir10 prior0" and rows[0]["n"] == 3
    assert rows[0]["prior/spearman"] == pytest.approx(0.8)
    assert rows[0]["prior/spearman_std"] == pytest.approx(0.1)


def test_a_refused_resume_names_what_changed_and_what_to_do(tmp_path):
    """A study whose resolved spec changed (here a method field, as when the code moved fields
    between method blocks) is refused; the error lists the differing paths, says that the code can
    change the hash too, and how to go on. An older stamp without the spec says it cannot list them."""
    import json

    from platform.errors import PlatformInputError
    from platform.execute import PLAN_STAMP, _check_resume, _stamp

    plan = _plan(tmp_path)
    folder = tmp_path / "storage" / plan.study.name
    _stamp(folder, plan)
    _check_resume(folder, plan)  # unchanged: resumes
    stamp = json.loads((folder / PLAN_STAMP).read_text(encoding="utf-8"))
    stamp["spec"]["method"]["gamma"] = 2.0  # what la's block held before methods owned their fields
    stamp["spec_hash"] = "0" * 64
    (folder / PLAN_STAMP).write_text(json.dumps(stamp), encoding="utf-8")
    with pytest.raises(PlatformInputError) as err:
        _check_resume(folder, plan)
    msg = str(err.value)
    assert "method.gamma: 2.0 -> (absent)" in msg and "code resolves the same file differently" in msg
    assert "move that folder away, or change the study's name, and run without --resume" in msg
    del stamp["spec"]
    (folder / PLAN_STAMP).write_text(json.dumps(stamp), encoding="utf-8")
    with pytest.raises(PlatformInputError, match="predates recording the resolved spec"):
        _check_resume(folder, plan)


def test_a_tuner_pickled_before_the_loggers_were_listed_resumes_with_todays_callbacks():
    # a tuner.pkl from before result.json / progress.csv loggers were listed explicitly holds
    # [tracker, progress, fatal]; with Tune's automatic loggers off, keeping those would lose the logs
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from platform.execute import FatalFailures, _use_callbacks
    from platform.tracking import MLflowStudyCallback

    tracker, progress = MLflowStudyCallback.__new__(MLflowStudyCallback), ProgressCallback.__new__(ProgressCallback)
    old = SimpleNamespace(callbacks=[MLflowStudyCallback.__new__(MLflowStudyCallback),
                                     ProgressCallback.__new__(ProgressCallback), FatalFailures()])
    tuner = SimpleNamespace(_local_tuner=SimpleNamespace(get_run_config=lambda: old))
    today = [tracker, progress, FatalFailures(), JsonLoggerCallback(), CSVLoggerCallback()]
    _use_callbacks(tuner, today)
    assert old.callbacks is today


def test_spec_changes_names_a_change_of_type_the_hash_sees():
    from platform.execute import spec_changes

    assert spec_changes({"a": {"b": 1}, "c": 2}, {"a": {"b": 1.0}, "c": 2}) == ["a.b: 1 -> 1.0"]
    assert spec_changes({"a": 1}, {"a": 1}) == []
