"""What a trial reports to Tune stays small (Tune keeps statistics of every numeric key of every
trial in its experiment state, rewritten at each snapshot), and every metric still reaches MLflow
and the driver's records (``trainables.contract.tune_result`` / ``full_result``)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from plans import plan_from_text
from platform.execute import _records
from platform.tracking import MLflowStudyCallback
from trainables import trainable as T
from trainables.contract import (META_KEY, RESULT_FIELD, TUNE_RESULT_KEYS, full_result, rounded,
                                 reporting_objective, tune_result)

TINY_PRETRAIN = {"corpus_size": 400, "epochs": 1, "width": 32, "depth": 1}
OBJECTIVE = "val/acc"

STUDY = """
name: tune-result-test
dataset: {{name: toy_lt, imbalance_ratio: 10, val_per_class: 5,
          world: {{num_classes: 5, n_max: 40, test_per_class: 10, image_size: 16}}}}
backbones: [{{family: toy, pretrain: {{corpus_size: 400, epochs: 1, width: 32, depth: 1}}}}]
finetune: {{peft: linear, head: linear, epochs: 1, batch_size: 64, augment: false}}
storage: {tmp}/storage
tracking_uri: sqlite:///{tmp}/mlflow.db
"""


def _backdoor(tmp_path: Path, views: list[str], replicates: int) -> dict:
    return {
        "dataset": {"name": "toy_lt", "imbalance_ratio": 10, "val_per_class": 6,
                    "world": {"num_classes": 6, "n_max": 40, "test_per_class": 10}},
        "backbone": {"family": "toy", "pretrain": {"view": views[0], **TINY_PRETRAIN}},
        "pool": [{"family": "toy", "pretrain": {"view": v, **TINY_PRETRAIN}} for v in views],
        "finetune": {"epochs": 1, "batch_size": 64, "peft": "adaptformer", "head": "text", "augment": False},
        "method": {"name": "backdoor"},
        "backdoor": {"confounders": len(views), "baselines": [{"name": "la"}]},
        "replicates": [{"finetune": s} for s in range(replicates)],
        "runtime": {"cache_dir": str(tmp_path / "cache"), "zoo_dir": str(tmp_path / "zoo"),
                    "num_threads": 1, "artifacts": False},
    }


def _same(a: dict, b: dict) -> bool:
    """Equal dicts, NaN equal to NaN (metrics of a group no class falls in are NaN)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _reported_to_tune(config: dict, monkeypatch) -> tuple[dict, dict]:
    """(what ``tune.report`` received, what the trial returned) for one trial run as the platform
    runs it (under the driver wrapper's objective), ``tune.report`` captured."""
    from ray import tune

    sent: list[dict] = []
    monkeypatch.setattr(tune, "report", lambda metrics, checkpoint=None: sent.append(dict(metrics)))
    with reporting_objective(OBJECTIVE):
        returned = T.run_trial(config, T._TuneReporter())
    assert len(sent) == 1, "a stage-2 trial reports once"
    return sent[0], returned


def test_pack_and_unpack_round_trip_and_tune_keys():
    metrics = {"epoch": 3, "val/acc": 0.5, "test/acc": 0.25, "val/bal_acc": 0.4,
               "pool/prior_spearman": float("nan"), "backdoor/M": 2}
    packed = tune_result(metrics, OBJECTIVE)
    assert set(packed) == {OBJECTIVE, *TUNE_RESULT_KEYS, RESULT_FIELD}
    assert isinstance(packed[RESULT_FIELD], str)
    unpacked = full_result(packed)
    assert _same(unpacked, metrics)
    # the objective is always Tune's own key, whatever it is; nothing to pack means no field
    assert "val/bal_acc" in tune_result(metrics, "val/bal_acc")
    assert RESULT_FIELD not in tune_result({"epoch": 1, "val/acc": 0.1}, OBJECTIVE)
    assert full_result({"epoch": 1, "val/acc": 0.1}) == {"epoch": 1, "val/acc": 0.1}  # unpacked already


def test_tune_analyses_only_the_few_keys_of_a_packed_result():
    """Tune's per-key statistics of a trial (its state entry) hold the reported keys, not the
    packed ones: Tune skips a str value (ray.tune.experiment.trial.Trial.update_last_result)."""
    from ray.tune.experiment.trial import Trial

    metrics = {"val/acc": 0.5, "test/acc": 0.25, **{f"val/m{i}": i / 100 for i in range(50)}}
    trial = Trial("ltbias_trial", stub=True)
    trial.update_last_result({**tune_result(metrics, OBJECTIVE), "training_iteration": 1})
    analysed = set(trial.run_metadata.metric_analysis)
    assert {OBJECTIVE, "test/acc"} <= analysed and not any(k.startswith("val/m") for k in analysed)
    assert len(analysed) <= 4


def test_a_stage2_trial_reports_few_keys_to_tune_whatever_its_pool_and_replicates(tmp_path, monkeypatch):
    small, small_out = _reported_to_tune(_backdoor(tmp_path, ["top", "bottom"], 1), monkeypatch)
    large, large_out = _reported_to_tune(_backdoor(tmp_path, ["top", "bottom", "left"], 2), monkeypatch)
    assert set(small) == set(large) == {OBJECTIVE, "test/acc", RESULT_FIELD}
    assert len(large_out) > 100 and "backdoor/w2" in large_out  # the long tail the trial computed
    assert _same(full_result(large), large_out) and _same(full_result(small), small_out)
    # outside the platform's wrapper (Tune used directly) every metric is its own key
    sent: list[dict] = []
    from ray import tune
    monkeypatch.setattr(tune, "report", lambda metrics, checkpoint=None: sent.append(dict(metrics)))
    T.run_trial(_backdoor(tmp_path, ["top", "bottom"], 1), T._TuneReporter())
    assert _same(sent[0], small_out)


def test_mlflow_and_the_records_get_every_metric_of_a_packed_result(tmp_path, monkeypatch):
    reported, full = _reported_to_tune(_backdoor(tmp_path, ["top", "bottom"], 2), monkeypatch)
    plan = plan_from_text(STUDY, tmp_path)
    cell = plan.cells[0]
    config = dict(cell.base_config, **{META_KEY: {"cell": cell.id, "stage": 2, "group": 0}})
    # a Tune result as the callback receives it: the report plus Tune's bookkeeping
    result = {**reported, "training_iteration": 1, "timestamp": int(time.time()), "pid": 1,
              "done": True, "trial_id": "dddd0001", "config": config}
    callback = MLflowStudyCallback(plan.tracking_uri, plan, str(tmp_path / "storage" / plan.study.name))
    callback.setup()
    trial = SimpleNamespace(trial_id="dddd0001", config=config)
    callback.on_trial_start(0, [], trial)
    callback.on_trial_result(0, [], trial, result)
    callback.flush()
    run_id = callback.tracker._trial_runs["dddd0001"]
    logged = callback.tracker.client.get_run(run_id).data.metrics
    finite = {k: v for k, v in full.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    assert set(logged) == set(finite) and len(logged) > 100
    assert all(logged[k] == rounded(v) for k, v in finite.items())  # as tracking logs every metric
    callback.on_experiment_end([])
    # the driver's records (selection, the CLI rows) read the unpacked metrics
    res = SimpleNamespace(metrics=result, config=config, path=str(tmp_path / "c00_dddd0001"), error=None)
    record, = _records([res], {})
    assert _same({k: record["result"][k] for k in full}, full)
