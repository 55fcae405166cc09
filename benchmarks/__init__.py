"""Benchmarks: how fast the platform is, each measured against what a user would do instead.

Every ``bench_*.py`` module has ``run(workdir: Path, quick: bool) -> dict`` returning a result
made by ``result(...)``; ``python -m benchmarks.run`` adds the machine and writes the JSON and the
summary. Every measure is a ratio of two things timed side by side, interleaved, in one process
(or one run), so that load from other processes on a shared machine hits both sides alike.
"""

from __future__ import annotations

import copy
import statistics
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

# The toy setting every CPU benchmark uses: the demo's model size (width 64, depth 4 ViT on 32x32
# images) with a short pre-training, so that the zoo is built in seconds and then stays warm.
TOY_PRETRAIN = {"corpus_size": 1000, "epochs": 1}
TOY_WORLD = {"num_classes": 10, "n_max": 100, "test_per_class": 10}

_GOAL_OPS: dict[str, Callable[[float, float], bool]] = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b}


def toy_trial(workdir: Path, **sections: dict) -> dict:
    """A stage-1 TrialConfig dict on the toy world, caches under ``workdir``; ``sections`` update
    the named sections key by key (e.g. ``finetune={"epochs": 2}``)."""
    cfg: dict[str, Any] = {
        "dataset": {"name": "toy_lt", "imbalance_ratio": 10, "val_per_class": 5, "world": dict(TOY_WORLD)},
        "backbone": {"family": "toy", "pretrain": dict(TOY_PRETRAIN)},
        "finetune": {"peft": "adaptformer", "head": "cosine", "epochs": 2, "batch_size": 64, "lr": 0.02,
                     "augment": False},
        "method": {"name": "ce"},
        "seed": 0,
        "runtime": {"cache_dir": str(workdir / "cache"), "zoo_dir": str(workdir / "zoo"),
                    "num_threads": 1, "artifacts": False, "device": "cpu"},
    }
    for name, values in sections.items():
        if isinstance(values, dict) and isinstance(cfg.get(name), dict):
            cfg[name] = {**cfg[name], **copy.deepcopy(values)}
        else:
            cfg[name] = copy.deepcopy(values)
    return cfg


def result(name: str, *, goal_op: str | None, goal_value: float | None, value: float | None, unit: str,
           measure: str, details: dict, goal_note: str = "") -> dict:
    """A benchmark result: ``value`` (the ratio, or seconds/images per second) against its goal.

    ``passed_goal`` is None when there is no goal or no value (e.g. MFU without a GPU).
    """
    if goal_op is not None and goal_op not in _GOAL_OPS:
        raise ValueError(f"goal_op {goal_op!r} of benchmark {name!r}: use one of {sorted(_GOAL_OPS)}")
    passed = (None if goal_op is None or goal_value is None or value is None
              else bool(_GOAL_OPS[goal_op](value, goal_value)))
    goal = f"{goal_op} {goal_value:g}{'' if unit == 'x' else ' ' + unit}" if goal_op else "none"
    return {"name": name, "measure": measure, "goal": goal, "goal_note": goal_note,
            "ratio": None if value is None else round(float(value), 4), "unit": unit,
            "passed_goal": passed, "details": details}


@contextmanager
def timed(into: dict, key: str) -> Iterator[None]:
    """Add the wall seconds of the ``with`` body to ``into[key]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        into[key] = into.get(key, 0.0) + time.perf_counter() - start


def median(values: list[float]) -> float:
    """The median (robust to the one repetition a neighbour's burst of load slowed down)."""
    return float(statistics.median(values))


def rounded(d: dict, digits: int = 4) -> dict:
    """``d`` with float values rounded (nested dicts and lists too), for readable JSON."""
    def r(v: Any) -> Any:
        if isinstance(v, float):
            return round(v, digits)
        if isinstance(v, dict):
            return {k: r(x) for k, x in v.items()}
        if isinstance(v, list):
            return [r(x) for x in v]
        return v
    return r(d)


def main_of(name: str) -> None:
    """``python -m benchmarks.bench_X [--quick] ...``: run benchmark ``name`` alone through
    ``benchmarks.run`` (same JSON and summary)."""
    import sys

    from benchmarks.run import main

    sys.exit(1 if main(["--only", name, *sys.argv[1:]]) else 0)
