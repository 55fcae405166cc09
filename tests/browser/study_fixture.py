"""A small, real study in MLflow for the report tests, laid out as platform.tracking lays one out.

Nothing here is an invented constant: every trial trains a numpy softmax regression on features of
a simulated long-tailed world and is scored by ``trainables.metrics.compute_metrics``. The world
has ``K`` simulated foundation models; each has its own pre-training label prior ``q_k``, and the
features it gives a class are the noisier the rarer that class was in its pre-training (parameter
imbalance). Cells: downstream imbalance ratio x method (ce, la, backdoor), one Optuna study per
cell in an RDB beside the MLflow DB; train cells run each proposal once per seed, backdoor trials
evaluate all seeds and report ``{metric}_std`` (stage 2), as platform.searcher does.
"""

from __future__ import annotations

import functools
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import optuna
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from trainables.config import TrialConfig
from trainables.contract import (SPEC_ARTIFACT_DIR, SPEC_FILE, Envelope, Level, Tag, grid_run_name,
                                 trial_params, trial_run_name, trial_tags)
from trainables.metrics import compute_metrics
from trainables.selection import REPLICATES_METRIC

C, DIM, K, N_MAX, VAL_PER_CLASS, TEST_PER_CLASS = 12, 16, 3, 200, 10, 30
EPOCHS, STEPS_PER_EPOCH = 3, 40
SEEDS = (0, 1)


@dataclass
class FakeStudy:
    """Where the fake study lives and what it holds."""

    name: str
    tracking_uri: str
    optuna_storage: str
    experiment_id: str
    study_run_id: str
    trial_run_ids: list[str] = field(default_factory=list)
    cells: list[str] = field(default_factory=list)


class _World:
    """Class means, K backbones (projection + pre-training prior), data splits per imbalance ratio."""

    def __init__(self) -> None:
        rng = np.random.default_rng(1234)
        self.means = rng.normal(0.0, 1.0, (C, DIM))
        self.proj = [np.linalg.qr(rng.normal(size=(DIM, DIM)))[0] for _ in range(K)]
        base = (1 / 20) ** (np.arange(C) / (C - 1))  # pre-training imbalance ratio 20
        self.q = [base[rng.permutation(C)] / base.sum() for _ in range(K)]
        # Rank of each class in backbone k's pre-training (0 = most frequent) sets its feature noise.
        self.noise = [0.7 + 1.1 * np.argsort(np.argsort(-q)) / (C - 1) for q in self.q]

    def counts(self, ir: float) -> np.ndarray:
        return np.maximum((N_MAX * (1 / ir) ** (np.arange(C) / (C - 1))).astype(int), 1)

    def split(self, counts: np.ndarray, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return rng.permutation(np.repeat(np.arange(C), counts))

    def features(self, k: int, labels: np.ndarray, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed * 7919 + k)
        x = self.means[labels] + rng.normal(size=(len(labels), DIM)) * self.noise[k][labels, None]
        return x @ self.proj[k]


def _train(world: _World, k: int, ir: float, seed: int, lr: float, tau: float,
           report: Callable[[int, dict], None] | None = None, crash_at_epoch: int | None = None
           ) -> dict[str, np.ndarray]:
    """Softmax regression on backbone k's features; tau > 0 = logit-adjusted loss. Returns logits."""
    counts = world.counts(ir)
    y_tr = world.split(counts, 100 + seed)
    y_val = np.repeat(np.arange(C), VAL_PER_CLASS)
    y_te = np.repeat(np.arange(C), TEST_PER_CLASS)
    x_tr = world.features(k, y_tr, 1000 + seed)
    x_val, x_te = world.features(k, y_val, 2000), world.features(k, y_te, 3000)
    rng = np.random.default_rng(seed)
    w, b = rng.normal(0, 0.01, (DIM, C)), np.zeros(C)
    adjust = tau * np.log(counts / counts.sum())
    onehot = np.eye(C)[y_tr]
    for epoch in range(1, EPOCHS + 1):
        if epoch == crash_at_epoch:
            raise RuntimeError(f"injected fault crash_at_epoch:{epoch}")
        with np.errstate(over="ignore", invalid="ignore"):
            for _ in range(STEPS_PER_EPOCH):
                z = x_tr @ w + b + adjust
                z -= z.max(axis=1, keepdims=True)
                p = np.exp(z)
                p /= p.sum(axis=1, keepdims=True)
                loss = float(-np.log(np.clip(p[np.arange(len(y_tr)), y_tr], 1e-12, None)).mean())
                grad = (p - onehot) / len(y_tr)
                w -= lr * (x_tr.T @ grad + 5e-4 * w)
                b -= lr * grad.sum(axis=0)
        if report is not None:
            val = compute_metrics(x_val @ w + b, y_val, counts, world.q[k], split="val")
            report(epoch, {"epoch": epoch, "train/loss": loss, "train/lr": lr, **val})
    return {"val": x_val @ w + b, "test": x_te @ w + b, "y_val": y_val, "y_test": y_te, "counts": counts}


@functools.lru_cache(maxsize=None)
def _stratum(world: _World, k: int, ir: float, seed: int) -> dict[str, np.ndarray]:
    """A stratum's stage-1 fine-tune (logit-adjusted), computed once, like the stage-1 cache."""
    return _train(world, k, ir, seed, 0.5, 1.0)


class _Logger:
    """Creates runs with the tags and params platform.tracking writes."""

    def __init__(self, client: MlflowClient, experiment_id: str) -> None:
        self.client, self.experiment_id = client, experiment_id

    def run(self, name: str, tags: dict[str, str], params: dict[str, object]) -> str:
        run_id = self.client.create_run(self.experiment_id, tags=tags, run_name=name).info.run_id
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i:i + 100], synchronous=True)
        return run_id

    def metrics(self, run_id: str, step: int, values: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in values.items() if np.isfinite(v)]
        self.client.log_batch(run_id, metrics=items, synchronous=True)


def _config(ir: float, method: str, seed: int, **over: object) -> dict:
    cfg = TrialConfig.model_validate({
        "dataset": {"name": "toy_lt", "imbalance_ratio": ir, "num_classes": C, "val_per_class": VAL_PER_CLASS},
        "method": {"name": method},  # la: its default tau 1.0
        "finetune": {"peft": "linear", "head": "linear", "epochs": EPOCHS},
        "seed": seed, "replicates": [{"finetune": s} for s in SEEDS],
    }).model_dump(mode="json")
    flat = trial_params(cfg)  # what platform.tracking logs: only the params the method reads
    flat.update(over)
    return flat


def build_fake_study(root: Path, name: str = "fake-lt", irs: tuple[float, ...] = (10.0, 100.0),
                     methods: tuple[str, ...] = ("ce", "la", "backdoor"), proposals: int = 3,
                     with_failed_trial: bool = True, older_run: bool = True) -> FakeStudy:
    """Run the fake study into ``sqlite:///<root>/mlflow.db`` (+ ``optuna.db``) and return its ids."""
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    storage = f"sqlite:///{root / 'optuna.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(name, artifact_location=(root / "mlartifacts").as_uri())
    log = _Logger(client, exp_id)
    if older_run:  # an earlier, aborted execution: the report must pick the latest one
        old = log.run(f"{name} earlier", {Tag.LEVEL: Level.STUDY, Tag.STUDY: name}, {})
        client.set_terminated(old, status="KILLED")
        time.sleep(0.01)
    grid = {"dataset.imbalance_ratio": list(irs), "method.name": list(methods)}
    spec = {"name": name, "grid": grid, "search": {"metric": "val/acc", "mode": "max"}}
    study_run = log.run(f"{name} {time.strftime('%Y-%m-%d %H:%M:%S')}", {Tag.LEVEL: Level.STUDY, Tag.STUDY: name},
                        {"name": name, "search.metric": "val/acc", "search.mode": "max",
                         **{f"grid.{k}": v for k, v in grid.items()}})
    with tempfile.TemporaryDirectory() as tmp:  # the resolved spec, as platform.tracking logs it
        path = Path(tmp, SPEC_FILE)
        path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
        client.log_artifact(study_run, str(path), artifact_path=SPEC_ARTIFACT_DIR)
    out = FakeStudy(name, uri, storage, exp_id, study_run)
    world = _World()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for ir in irs:
        for method in methods:
            cell = f"c{len(out.cells):02d}"
            out.cells.append(cell)
            values = {"dataset.imbalance_ratio": ir, "method.name": method}
            cell_run = log.run(grid_run_name(cell, values),
                               {Tag.LEVEL: Level.CELL, Tag.CELL: cell, Tag.PARENT: study_run,
                                Tag.STUDY_RUN: study_run}, values)
            sampler = optuna.samplers.RandomSampler(seed=zlib.crc32(cell.encode()))
            opt = optuna.create_study(study_name=f"{name}/{cell}", storage=storage, sampler=sampler, direction="maximize")
            runner = _backdoor_trial if method == "backdoor" else _train_trial
            for _ in range(proposals):
                trial = opt.ask()
                values = runner(world, log, out, cell, cell_run, study_run, ir, method, trial)
                opt.tell(trial, float(np.mean(values)))
            if with_failed_trial and method == "la" and ir == max(irs):
                _failed_trial(world, log, out, cell, cell_run, study_run, ir)
            client.set_terminated(cell_run, status="FINISHED")
    client.set_terminated(study_run, status="FINISHED")
    return out


def _envelope(cell: str, stage: int, group: int, seed: int | None, number: int | None) -> dict:
    return Envelope(cell, stage, group=group, optuna_trial=number, seed=seed).to_dict()


def _trial_tags(cell_run: str, study_run: str, trial_id: str, envelope: dict) -> dict[str, str]:
    return {**trial_tags(envelope), Tag.LEVEL: Level.TRIAL, Tag.PARENT: cell_run,
            Tag.STUDY_RUN: study_run, Tag.TRIAL_ID: trial_id}


def _train_trial(world: _World, log: _Logger, out: FakeStudy, cell: str, cell_run: str, study_run: str,
                 ir: float, method: str, trial: optuna.Trial) -> list[float]:
    """Stage 1: one run per seed of the proposal; returns the seeds' final val/acc."""
    lr = trial.suggest_float("finetune.lr", 0.05, 2.0, log=True)
    tau = 1.0 if method == "la" else 0.0
    values = []
    for seed in SEEDS:
        trial_id = f"{cell}_{trial.number:03d}_{seed}"
        envelope = _envelope(cell, 1, trial.number, seed, trial.number)
        run = log.run(trial_run_name(envelope, trial_id), _trial_tags(cell_run, study_run, trial_id, envelope),
                      _config(ir, method, seed, **{"finetune.lr": lr}))
        result = _train(world, 0, ir, seed, lr, tau, report=lambda e, m: log.metrics(run, e, m))
        test = compute_metrics(result["test"], result["y_test"], result["counts"], world.q[0], split="test")
        log.metrics(run, EPOCHS, test)
        log.client.set_terminated(run, status="FINISHED")
        out.trial_run_ids.append(run)
        values.append(compute_metrics(result["val"], result["y_val"], result["counts"], world.q[0])["val/acc"])
    return values


def _backdoor_trial(world: _World, log: _Logger, out: FakeStudy, cell: str, cell_run: str, study_run: str,
                    ir: float, method: str, trial: optuna.Trial) -> list[float]:
    """Stage 2: sum the strata's logits (weighted P(c)) for every seed; report mean and _std."""
    m = trial.suggest_int("backdoor.confounders", 1, K)
    weighting = trial.suggest_categorical("backdoor.weighting", ["uniform", "fitted"])
    trial_id = f"{cell}_{trial.number:03d}"
    envelope = _envelope(cell, 2, trial.number, None, trial.number)
    run = log.run(trial_run_name(envelope, trial_id), _trial_tags(cell_run, study_run, trial_id, envelope),
                  _config(ir, method, SEEDS[0], **{"backdoor.confounders": m, "backdoor.weighting": weighting}))
    per_seed = []
    for seed in SEEDS:
        strata = [_stratum(world, k, ir, seed) for k in range(m)]
        accs = np.array([compute_metrics(s["val"], s["y_val"], s["counts"], world.q[k])["val/acc"]
                         for k, s in enumerate(strata)])
        weights = np.full(m, 1 / m) if weighting == "uniform" else accs / accs.sum()
        metrics = {}
        for split in ("val", "test"):
            logits = sum(wk * s[split] for wk, s in zip(weights, strata))
            metrics.update(compute_metrics(logits, strata[0][f"y_{split}"], strata[0]["counts"], world.q[0], split=split))
        # the paired gain over the best stratum chosen on validation (as trainables.methods.backdoor)
        best = strata[int(np.argmax(accs))]
        single = compute_metrics(best["test"], best["y_test"], best["counts"], world.q[0], split="test")
        metrics["gain/test/acc"] = metrics["test/acc"] - single["test/acc"]
        per_seed.append(metrics)
    keys = per_seed[0].keys()
    final = {k: float(np.mean([p[k] for p in per_seed])) for k in keys}
    final.update({f"{k}_std": float(np.std([p[k] for p in per_seed], ddof=1)) for k in keys})
    final[REPLICATES_METRIC] = float(len(per_seed))
    log.metrics(run, 0, final)
    log.client.set_terminated(run, status="FINISHED")
    out.trial_run_ids.append(run)
    return [final["val/acc"]]


def _failed_trial(world: _World, log: _Logger, out: FakeStudy, cell: str, cell_run: str, study_run: str,
                  ir: float) -> None:
    """A trial with the testing fault ``runtime.fault=crash_at_epoch:2``: it logs epoch 1, then
    fails and is marked FAILED with its error, as platform.tracking does."""
    trial_id = f"{cell}_fault"
    envelope = _envelope(cell, 1, 99, 0, None)
    run = log.run(trial_run_name(envelope, trial_id), _trial_tags(cell_run, study_run, trial_id, envelope),
                  _config(ir, "la", 0, **{"runtime.fault": "crash_at_epoch:2"}))
    try:
        _train(world, 0, ir, 0, 0.5, 1.0, report=lambda e, m: log.metrics(run, e, m), crash_at_epoch=2)
    except RuntimeError as err:
        log.client.set_tag(run, Tag.ERROR, f"RuntimeError: {err}")
        log.client.set_terminated(run, status="FAILED")
        out.trial_run_ids.append(run)
