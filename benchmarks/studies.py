"""Study runs shared by the study-level benchmarks (peer, stage2_throughput, scaling, fixed_cost).

Two toy studies, both on the benchmark world (``benchmarks.TOY_WORLD``, a warm zoo):
- ``stage1``: fine-tunes (ce and la cells, Optuna over the learning rate);
- ``stage2``: a backdoor-adjustment search (confounders M and weighting) over a pool of two toy
  models on two seeds (the demo's trial on 20 classes), whose four stage-1 prerequisites are in
  a warm cache (filled once by ``warm_cache``).

``run_ours`` runs a plan through ``platform.execute.run_study`` as ``python -m platform.run``
does. ``run_peer`` is the script a competent Ray Tune user would write instead: one ``Tuner`` per
cell with ``ConcurrencyLimiter(OptunaSearch(TPESampler))`` and Ray's ``MLflowLoggerCallback``,
calling the same ``tune_trainable`` on the same cell configs. Both run in the Ray instance the
benchmark started, so Ray start-up is not part of either side (``fixed_cost`` measures it).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from benchmarks import TOY_PRETRAIN, TOY_WORLD

STAGE2_WORLD = {"num_classes": 20, "n_max": 200, "test_per_class": 30}

STUDIES = {
    "stage1": """
name: {name}
dataset: {{name: toy_lt, imbalance_ratio: 10, val_per_class: 5, world: {world}}}
backbones: [{{family: toy, pretrain: {pretrain}}}]
finetune: {{peft: adaptformer, head: cosine, epochs: {epochs}, batch_size: 64, augment: false}}
grid:
  method.name: [ce, la]
search:
  algorithm: optuna
  num_samples: {samples}
  seed: 0
  space:
    finetune.lr: {{logfloat: [0.005, 0.1]}}
scheduler: {{fifo: {{}}}}
resources: {{cpu: 1, gpu: 0}}
max_concurrent: {concurrency}
max_failures: 0
seeds: [0]
runtime: {{num_threads: 1, artifacts: false, zoo_dir: {zoo}, cache_dir: {cache}}}
storage: {folder}/storage
tracking_uri: sqlite:///{folder}/mlflow.db
""",
    "stage2": """
name: {name}
dataset: {{name: toy_lt, imbalance_ratio: 100, val_per_class: 10, world: {world2}}}
backbones:
  - {{family: toy, label: toy-top, pretrain: {pretrain_top}}}
  - {{family: toy, label: toy-bottom, pretrain: {pretrain_bottom}}}
finetune: {{peft: adaptformer, head: text, epochs: {epochs}, lr: 0.02, batch_size: 128, augment: false}}
method: {{name: backdoor}}
backdoor: {{confounders: 2, aggregation: logprob, stratum_method: {{name: la, tau: 1.0}}, baselines: [{{name: la}}]}}
search:
  algorithm: optuna
  num_samples: {samples}
  seed: 0
  space:
    backdoor.confounders: {{int: [1, 2]}}
    backdoor.weighting: {{categorical: [uniform, fitted, reliability]}}
scheduler: {{fifo: {{}}}}
resources: {{cpu: 1, gpu: 0}}
max_concurrent: {concurrency}
max_failures: 0
seeds: [0, 1]
runtime: {{num_threads: 1, artifacts: false, zoo_dir: {zoo}, cache_dir: {cache}}}
storage: {folder}/storage
tracking_uri: sqlite:///{folder}/mlflow.db
""",
}


def study_plan(kind: str, workdir: Path, folder: Path, *, samples: int, epochs: int = 1,
               concurrency: int = 2, name: str | None = None) -> Any:
    """The plan of study ``kind`` writing under ``folder``; the zoo (and, for ``stage2``, the
    stage-1 cache) shared in ``workdir``; a ``stage1`` study's cache is its own, so it trains."""
    from platform.plan import make_plan
    from platform.studyfile import load_study

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "study.yaml"
    path.write_text(STUDIES[kind].format(
        name=name or f"bench-{kind}-{folder.name}", world=json.dumps(TOY_WORLD),
        pretrain=json.dumps(TOY_PRETRAIN), world2=json.dumps(STAGE2_WORLD),
        pretrain_top=json.dumps({**TOY_PRETRAIN, "view": "top"}),
        pretrain_bottom=json.dumps({**TOY_PRETRAIN, "view": "bottom"}), epochs=epochs, samples=samples, concurrency=concurrency,
        zoo=workdir / "zoo", folder=folder,
        # stage-2 studies share one warm stage-1 cache; a stage-1 study trains into its own
        cache=workdir / "cache" if kind == "stage2" else folder / "cache"), encoding="utf-8")
    return make_plan(load_study(path), str(path))


def warm_cache(plan: Any) -> float:
    """Train the plan's stage-1 prerequisites into the shared cache now (in this process); seconds."""
    from benchmarks.bench_throughput import NullReporter
    from trainables.trainable import run_trial

    start = time.perf_counter()
    for config in plan.prerequisites:
        run_trial(copy.deepcopy(config), NullReporter())
    return time.perf_counter() - start


def warm_zoo(plan: Any) -> float:
    """Pre-train the plan's toy backbones into the shared zoo now (one fine-tune of its first cell
    into a throwaway cache, in this process), so that no timed trial pre-trains; seconds."""
    import tempfile

    from benchmarks.bench_throughput import NullReporter
    from trainables.trainable import run_trial

    start = time.perf_counter()
    config = copy.deepcopy(plan.cells[0].base_config)
    with tempfile.TemporaryDirectory(prefix="bench-zoo-warmup-") as tmp:
        config["runtime"]["cache_dir"] = tmp
        run_trial(config, NullReporter())
    return time.perf_counter() - start


def start_ray() -> bool:
    """A local Ray for the benchmark (True when this call started it)."""
    from platform.raystart import init_ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    return init_ray(None)


def run_ours(plan: Any, trainable: Callable[[dict], None] | None = None) -> dict:
    """``run_study(plan)`` as the CLI runs it; wall seconds and outcome counts."""
    from platform.execute import run_study

    args = argparse.Namespace(address=None, storage=None, tracking_uri=None, max_concurrent=None,
                              resume=False)
    start = time.perf_counter()
    outcome = run_study(plan, args, trainable=trainable, progress_interval_s=3600)
    return {"wall_s": time.perf_counter() - start, "trials": outcome.total_trials,
            "failed": outcome.failed_trials}


def _searched_param_space(base: dict, space: dict) -> dict:
    """``base`` with each searched path replaced by the Tune domain a user would write."""
    from ray import tune

    config = copy.deepcopy(base)
    for path, spec in space.items():
        (kind, arg), = spec.items()
        domain = {"float": lambda a: tune.uniform(a[0], a[1]),
                  "logfloat": lambda a: tune.loguniform(a[0], a[1]),
                  "int": lambda a: tune.randint(a[0], a[1] + 1),
                  "categorical": lambda a: tune.choice(list(a))}[kind](arg)
        node = config
        *parents, leaf = path.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = domain
    return config


def run_peer(plan: Any, folder: Path, trainable: Callable[[dict], None] | None = None) -> dict:
    """The hand-written peer: one Tuner per cell (``ConcurrencyLimiter(OptunaSearch(TPE))``,
    ``MLflowLoggerCallback``) over the same cell configs; wall seconds and counts.

    The peer runs no prerequisite trials: it relies on the warm cache (a stage-1 study has none).
    """
    import optuna
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from trainables.trainable import tune_trainable

    fn = trainable or tune_trainable
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    uri = f"sqlite:///{folder / 'peer-mlflow.db'}"
    start = time.perf_counter()
    trials = failed = 0
    for cell in plan.cells:
        name = f"peer-{folder.name}-{cell.id}"
        searcher = ConcurrencyLimiter(
            OptunaSearch(sampler=optuna.samplers.TPESampler(seed=0), metric=plan.metric,
                         mode=plan.mode), max_concurrent=plan.max_concurrent)
        tuner = tune.Tuner(
            tune.with_resources(fn, {"cpu": 1}),
            param_space=_searched_param_space(cell.base_config, cell.space),
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=cell.trials),
            run_config=tune.RunConfig(
                name=name, storage_path=str(folder / "peer-storage"), verbose=0,
                callbacks=[MLflowLoggerCallback(tracking_uri=uri, experiment_name=name,
                                                save_artifact=False)]))
        results = tuner.fit()
        trials += len(results)
        failed += results.num_errors
    return {"wall_s": time.perf_counter() - start, "trials": trials, "failed": failed}
