"""The plan: a validated study expanded into cells, their trials and their stage-1 prerequisites.

This is the contract the execution engine (``platform.execute``) consumes; ``StudyOutcome`` is
what it returns to the CLI.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from platform import paths
from platform.checks import method_kind
from platform.dotpath import set_path, split_path
from platform.errors import SpecError
from platform.grid import GridPoint, expand_grid, searched
from platform.spec import Study
from platform.yamlsource import Source

__all__ = ["Cell", "Plan", "StudyOutcome", "apply_params", "check_fits", "local_capacity", "make_plan"]

DEFAULT_NUM_SAMPLES = 10


@dataclass
class Cell:
    """One grid point: a base trial config plus the search run inside it."""

    id: str                 # stable short id, "c00".."cNN" in grid order
    label: str              # "dataset.imbalance_ratio=10 method.name=la"
    values: dict            # grid path -> value for this cell
    base_config: dict       # TrialConfig dict (model_dump(mode="json")) of this cell
    kind: str               # "train" | "posthoc" | "ensemble"
    space: dict             # trial path -> distribution dict ({int: [lo, hi]}, ...); {} = none
    algorithm: str          # grid | random | optuna
    num_samples: int        # configurations to try (1 when space is empty)
    replicates: list[dict]  # Replicate dicts (world, pretrain, finetune seed) the cell runs
    trials: int             # train: num_samples * len(replicates); else num_samples
    prerequisites: list[dict]  # stage-1 trial configs this cell needs (trainables.stages)


@dataclass
class Plan:
    """Everything the execution engine needs to run a study."""

    study: Study
    study_path: str
    cells: list[Cell]
    prerequisites: list[dict]  # unique across cells by trainables.cache.stage1_key
    total_trials: int          # sum(cell.trials) + len(prerequisites)
    metric: str
    mode: str
    resources: dict            # {"cpu": float, "gpu": float} per trial
    max_concurrent: int        # 0 = no limit
    spec_hash: str
    tracking_uri: str
    storage: str
    optuna_storage: str


@dataclass
class StudyOutcome:
    """What ``platform.execute.run_study`` returns.

    ``rows``: one dict per cell, keys ``cell`` (id), ``label``, ``best_config`` (searched trial
    path -> value of the selected configuration; {} without search), ``metric`` (its value of
    ``plan.metric``), then any metric by its name: ``test/acc``, ``test/d_many``, ``test/d_medium``,
    ``test/d_few``, ``test/p_many``, ``test/p_medium``, ``test/p_few`` ... (missing = not reported).
    ``failed_trials``: trials that still failed after their retries (the CLI exits 1 when > 0).
    ``prior_rows``: per toy backbone, how well q_hat estimates its true pre-training prior.
    """

    rows: list[dict]
    failed_trials: int
    total_trials: int
    study_run_id: str
    tracking_uri: str
    prior_rows: list[dict] = field(default_factory=list)  # q_hat's error per backbone (execute.prior_rows)


def apply_params(base_config: dict, params: dict[str, Any]) -> dict:
    """A copy of ``base_config`` with searched values set (trial paths; '*' maps over lists)."""
    config = json.loads(json.dumps(base_config))
    for path, value in params.items():
        set_path(config, split_path(path), value)
    return config


def _num_samples(study: Study, space: dict) -> int:
    if not space:
        return 1
    if study.search.algorithm == "grid":
        return math.prod(len(d["categorical"]) for d in space.values())
    return study.search.num_samples or DEFAULT_NUM_SAMPLES


def _prerequisites(config: dict) -> list[dict]:
    from trainables.stages import prerequisites  # imports torch: only once the spec is valid
    return prerequisites(config)


def _stage1_key(config: dict) -> str:
    from trainables.cache import stage1_key
    from trainables.config import TrialConfig
    return stage1_key(TrialConfig.model_validate(config))


def _make_cell(study: Study, point: GridPoint) -> Cell:
    kind = method_kind(point.trial["method"]["name"])
    space = dict(study.search.space) if searched(study, point) else {}
    n = _num_samples(study, space)
    return Cell(id=point.id, label=point.label, values=dict(point.values),
                base_config=point.trial, kind=kind, space=space,
                algorithm=study.search.algorithm, num_samples=n, replicates=list(point.trial["replicates"]),
                trials=n * len(point.trial["replicates"]) if kind == "train" else n,
                prerequisites=_prerequisites(point.trial))


def make_plan(study: Study, study_path: str) -> Plan:
    """Expand ``study`` into cells (grid order), each cell's trials and the unique stage-1
    prerequisites; SpecError when a cell is invalid or two cells are the same."""
    cells = [_make_cell(study, p) for p in expand_grid(study)]
    unique: dict[str, dict] = {}
    for cell in cells:
        for pre in cell.prerequisites:
            unique.setdefault(_stage1_key(pre), pre)
    prerequisites = list(unique.values())
    assert study.tracking_uri is not None and study.storage is not None  # resolved by Study
    return Plan(
        study=study, study_path=study_path, cells=cells, prerequisites=prerequisites,
        total_trials=sum(c.trials for c in cells) + len(prerequisites),
        metric=study.search.metric, mode=study.search.mode,
        resources=study.resources.model_dump(), max_concurrent=study.max_concurrent,
        spec_hash=study.spec_hash(), tracking_uri=study.tracking_uri, storage=study.storage,
        optuna_storage=paths.optuna_storage(study.tracking_uri, study.storage))


def local_capacity(count_gpus: bool = True) -> tuple[float, float]:
    """(CPUs, GPUs) of this machine, as a local Ray would see them (CPU affinity, CUDA devices).

    Counting GPUs imports torch (seconds); ``count_gpus=False`` (a study that asks for no GPU)
    skips it and reports 0 GPUs.
    """
    try:
        cpus = float(len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        cpus = float(os.cpu_count() or 1)
    if not count_gpus:
        return cpus, 0.0
    import torch
    return cpus, float(torch.cuda.device_count() if torch.cuda.is_available() else 0)


def check_fits(plan: Plan, cpus: float, gpus: float) -> None:
    """SpecError when one trial asks for more CPUs or GPUs than the cluster has: Ray would keep
    it pending forever."""
    source = plan.study.source or Source(file=plan.study_path)
    issues = []
    for key, have, word in (("cpu", cpus, "CPUs"), ("gpu", gpus, "GPUs")):
        need = plan.resources[key]
        if need > have:
            issues.append(source.issue(("resources", key), f"one trial needs more {word} than the "
                                       f"machine has ({have:g}); lower it, or run on a cluster "
                                       "with --address", need))
    if issues:
        raise SpecError(issues, source.file)
