"""Measure 2: platform overhead of a study of short trials (goal: wall / (compute / concurrency) <= 1.15).

A toy study (FIFO, max_concurrent 2, 1 CPU per trial, storage and MLflow under a temporary folder)
runs through ``platform.execute.run_study`` exactly as ``python -m platform.run`` would, with two
kinds of instrumentation that do not change what runs:
- in the workers, the trainable is ``tune_trainable`` wrapped to log (one JSON line per trial) its
  start and end (wall clock), the seconds spent in ``tune.report`` (Tune persisting the
  checkpoint and handing over the result: platform time) and in ``train_one_epoch``,
  ``save_checkpoint`` and ``write_artifacts`` (trial time);
- in the driver, the MLflow callback, the progress callback and the Optuna searcher methods are
  wrapped with timers, and ``ray.init``, ``Tuner.fit`` and ``ray.shutdown`` are timed.
A trial's own compute is its time inside ``tune_trainable`` minus its time inside ``tune.report``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from benchmarks import TOY_PRETRAIN, result, rounded

NAME = "platform_overhead"

STUDY = """
name: {name}
dataset: {{name: toy_lt, imbalance_ratio: 10, val_per_class: 5,
          world: {{num_classes: 10, n_max: {n_max}, test_per_class: 10}}}}
backbones: [{{family: toy, pretrain: {pretrain}}}]
finetune: {{peft: adaptformer, head: cosine, epochs: {epochs}, batch_size: 64, augment: false}}
grid:
  method.name: [ce, la]
search:
  algorithm: optuna
  num_samples: {samples}
  space:
    finetune.lr: {{logfloat: [0.005, 0.1]}}
scheduler: {{fifo: {{}}}}
resources: {{cpu: 1, gpu: 0}}
max_concurrent: {concurrency}
max_failures: 0
seeds: [0]
runtime: {{num_threads: 1, zoo_dir: {zoo}}}
storage: {tmp}/storage
tracking_uri: sqlite:///{tmp}/mlflow.db
"""


def timed_trainable(log_path: str) -> Callable[[dict], None]:
    """``tune_trainable`` that appends its timings to ``log_path`` (a closure: Ray ships it by value)."""
    def bench_trial(config: dict) -> None:
        import json as _json
        import time as _time

        from ray import tune as _tune

        import trainables.trainable as T

        spent: dict[str, float] = {}

        def clocked(fn, key):
            def inner(*args, **kwargs):
                start = _time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    spent[key] = spent.get(key, 0.0) + _time.perf_counter() - start
            return inner

        originals = {"report": T._TuneReporter.report, "train_one_epoch": T.train_one_epoch,
                     "save_checkpoint": T.save_checkpoint, "write_artifacts": T.write_artifacts}
        T._TuneReporter.report = clocked(originals["report"], "tune_report")
        T.train_one_epoch = clocked(originals["train_one_epoch"], "train_one_epoch")
        T.save_checkpoint = clocked(originals["save_checkpoint"], "save_checkpoint")
        T.write_artifacts = clocked(originals["write_artifacts"], "write_artifacts")
        t0, p0 = _time.time(), _time.perf_counter()
        try:
            T.tune_trainable(config)
        finally:
            inside = _time.perf_counter() - p0
            T._TuneReporter.report = originals["report"]
            T.train_one_epoch = originals["train_one_epoch"]
            T.save_checkpoint = originals["save_checkpoint"]
            T.write_artifacts = originals["write_artifacts"]
            line = {"trial_id": _tune.get_context().get_trial_id(), "pid": os.getpid(),
                    "method": (config.get("method") or {}).get("name"), "start": t0,
                    "end": _time.time(), "inside_s": inside, **spent}
            with open(log_path, "a", encoding="utf-8") as f:
                f.write(_json.dumps(line) + "\n")

    return bench_trial


@contextmanager
def instrumented(targets: list[tuple[Any, str, str]], into: dict[str, float]) -> Iterator[None]:
    """Wrap ``getattr(owner, attr)`` for each (owner, attr, bucket) to add its seconds to ``into[bucket]``."""
    saved = []
    for owner, attr, bucket in targets:
        original = getattr(owner, attr)
        saved.append((owner, attr, original))

        def wrapper(*args, __fn=original, __bucket=bucket, **kwargs):
            start = time.perf_counter()
            try:
                return __fn(*args, **kwargs)
            finally:
                into[__bucket] = into.get(__bucket, 0.0) + time.perf_counter() - start
        functools.update_wrapper(wrapper, original)
        setattr(owner, attr, wrapper)
    try:
        yield
    finally:
        for owner, attr, original in reversed(saved):
            setattr(owner, attr, original)


def warm_zoo(zoo: Path, n_max: int) -> None:
    """Pre-train the study's toy model now, so that no trial waits on the zoo's lock."""
    from trainables.config import ToyPretrainConfig, ToyWorldConfig
    from trainables.world.zoo import load_or_train

    load_or_train(ToyWorldConfig(num_classes=10, n_max=n_max, test_per_class=10),
                  ToyPretrainConfig(**TOY_PRETRAIN), zoo)


def run_toy_study(tmp: Path, zoo: Path, *, samples_per_cell: int, epochs: int, n_max: int,
                  concurrency: int, start_ray: bool = True) -> dict:
    """Run the toy study (2 cells x ``samples_per_cell`` trials) and return the raw timings."""
    import ray
    from ray import tune

    from platform import execute, raystart
    from platform.plan import make_plan
    from platform.progress import ProgressCallback
    from platform.searcher import CellSearcher
    from platform.studyfile import load_study
    from platform.tracking import MLflowStudyCallback

    tmp.mkdir(parents=True, exist_ok=True)
    warm_zoo(zoo, n_max)
    path = tmp / "study.yaml"
    path.write_text(STUDY.format(name=f"bench-c{concurrency}", n_max=n_max, epochs=epochs,
                                 samples=samples_per_cell, concurrency=concurrency, zoo=zoo, tmp=tmp,
                                 pretrain=json.dumps(TOY_PRETRAIN)), encoding="utf-8")
    plan = make_plan(load_study(path), str(path))
    log_path = tmp / "trials.jsonl"
    driver: dict[str, float] = {}
    targets = [(MLflowStudyCallback, m, "mlflow_callbacks") for m in
               ("setup", "on_trial_start", "on_trial_result", "on_trial_complete", "finish")]
    targets += [(MLflowStudyCallback, "__init__", "mlflow_callbacks"),
                (ProgressCallback, "on_step_end", "progress_callback"),
                (ProgressCallback, "on_experiment_end", "progress_callback"),
                (CellSearcher, "suggest", "optuna_searcher"),
                (CellSearcher, "on_trial_complete", "optuna_searcher"),
                (execute, "check_tracking", "checks"), (execute, "check_storage", "checks"),
                (execute, "select_rows", "select_rows")]
    args = argparse.Namespace(address=None, storage=None, tracking_uri=None, max_concurrent=None, resume=False)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    t_start = time.perf_counter()
    if start_ray:
        start = time.perf_counter()
        raystart.init_ray(None)  # what run_study would call; timed apart
        driver["ray_init"] = time.perf_counter() - start
    fit_window: dict[str, float] = {}
    original_fit = tune.Tuner.fit

    def fit_with_clock(self):  # wall-clock window of the fit, to align with the workers' clocks
        fit_window["start"] = time.time()
        try:
            return original_fit(self)
        finally:
            fit_window["end"] = time.time()

    tune.Tuner.fit = fit_with_clock
    try:
        with instrumented(targets, driver):
            fit_window["run_study_start"] = time.time()
            outcome = execute.run_study(plan, args, trainable=timed_trainable(str(log_path)))
            fit_window["run_study_end"] = time.time()
    finally:
        tune.Tuner.fit = original_fit
    if start_ray:
        start = time.perf_counter()
        ray.shutdown()
        driver["ray_shutdown"] = time.perf_counter() - start
    wall = time.perf_counter() - t_start
    trials = [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines()]
    return {"wall": wall, "driver": driver, "trials": trials, "fit_window": fit_window,
            "n_trials": len(trials), "failed": outcome.failed_trials, "concurrency": concurrency,
            "total_trials": plan.total_trials}


def breakdown(raw: dict) -> dict:
    """Where the wall time of a study goes, from ``run_toy_study``'s raw timings."""
    trials, driver, c = raw["trials"], raw["driver"], raw["concurrency"]
    compute = sum(t["inside_s"] - t.get("tune_report", 0.0) for t in trials)
    inside = sum(t["inside_s"] for t in trials)
    window = raw["fit_window"]
    starts, ends = sorted(t["start"] for t in trials), sorted(t["end"] for t in trials)
    busy_span = ends[-1] - starts[0]
    return {
        "trials": len(trials), "concurrency": c,
        "study_wall_s": raw["wall"],
        "sum_trial_compute_s": compute,
        "ideal_wall_s (compute / concurrency)": compute / c,
        "sum_time_inside_tune_trainable_s": inside,
        "serial (one-off) driver time, seconds": {
            "ray_init": driver.get("ray_init", 0.0),
            "before_fit (tracking and storage checks, MLflow callback, Optuna studies)":
                window["start"] - window["run_study_start"],
            "tuner_fit_until_first_trial_starts (first actor start: worker process, imports)":
                starts[0] - window["start"],
            "tuner_fit_after_last_trial_ends (final results, experiment state, callbacks)":
                window["end"] - ends[-1],
            "after_fit (select_rows, MLflow finish)": window["run_study_end"] - window["end"],
            "ray_shutdown": driver.get("ray_shutdown", 0.0),
        },
        "while trials run": {
            "span_first_start_to_last_end_s": busy_span,
            "slot_seconds (span x concurrency)": busy_span * c,
            "slot_seconds_in_trial_compute": compute,
            "slot_seconds_in_tune_report (checkpoint persist + result handoff, in workers)":
                sum(t.get("tune_report", 0.0) for t in trials),
            "slot_seconds_idle_between_trials (scheduling, actor reuse, driver busy)":
                busy_span * c - inside,
            "driver_seconds_in_mlflow_callbacks": driver.get("mlflow_callbacks", 0.0),
            "driver_seconds_in_progress_callback": driver.get("progress_callback", 0.0),
            "driver_seconds_in_optuna_searcher": driver.get("optuna_searcher", 0.0),
        },
        "inside trial compute, seconds (summed over trials)": {
            "train_one_epoch": sum(t.get("train_one_epoch", 0.0) for t in trials),
            "save_checkpoint (trainable writes state.pt)": sum(t.get("save_checkpoint", 0.0) for t in trials),
            "write_artifacts (parquet + PNG for MLflow)": sum(t.get("write_artifacts", 0.0) for t in trials),
        },
        "ratio_counting_tune_report_as_compute": raw["wall"] / (inside / c),
        "ratio_of_busy_span_only (no Ray start/stop, no driver setup)": busy_span / (compute / c),
    }


def run(workdir: Path, quick: bool = False) -> dict:
    """Run the toy study once; ratio = study wall / (sum of trial compute / concurrency)."""
    samples, epochs, n_max = (2, 1, 40) if quick else (10, 6, 300)
    raw = run_toy_study(workdir / f"overhead-{time.time_ns()}", workdir / "zoo", samples_per_cell=samples,
                        epochs=epochs, n_max=n_max, concurrency=2)
    b = breakdown(raw)
    details = {
        "study": f"toy_lt 10 classes n_max {n_max}, AdaptFormer, {epochs} epochs, 2 cells (ce, la) x "
                 f"{samples} Optuna trials, FIFO, max_concurrent 2, 1 CPU and 1 thread per trial",
        "compute_definition": "per trial: seconds inside tune_trainable (measured in the worker) minus "
                              "seconds inside tune.report; summed over trials",
        "failed_trials": raw["failed"], **b,
    }
    return result(NAME, goal_op="<=", goal_value=1.15, value=b["study_wall_s"] / b["ideal_wall_s (compute / concurrency)"],
                  unit="x", measure="study wall time / (sum of trial compute / concurrency)",
                  details=rounded(details, 3))
