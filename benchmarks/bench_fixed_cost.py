"""Fixed cost: process start -> first trial start and last trial end -> process exit, ours / peer
(goal <= 1.0).

Each side is a fresh Python process, as a user starts it, with its own local Ray:
- ours: ``python -m platform.run study.yaml`` (the stage-1 study of ``benchmarks.studies``, one
  Optuna trial per cell, one epoch);
- peer: the hand-written script (``benchmarks.studies.run_peer``) over the same cell configs,
  read from a JSON file, with ``ray.init()`` before and ``ray.shutdown()`` after.
Trial start and end are the start and end times of each side's MLflow trial runs (both are set
by the driver's callbacks when Tune starts and completes a trial); process start and exit are
taken by this parent around ``subprocess.run``. Runs alternate; medians.

    python -m benchmarks.bench_fixed_cost [--quick]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import main_of, median, result, rounded
from benchmarks.studies import study_plan

NAME = "fixed_cost"

PEER_SCRIPT = """
import json, sys, types
from pathlib import Path
import ray
from benchmarks.studies import run_peer
cells = json.loads(Path(sys.argv[1]).read_text())
plan = types.SimpleNamespace(metric="val/acc", mode="max", max_concurrent=2,
                             cells=[types.SimpleNamespace(**c) for c in cells])
ray.init(num_cpus=2, include_dashboard=False)
run_peer(plan, Path(sys.argv[2]))
ray.shutdown()
"""

WARM_SCRIPT = """
import json, sys, time
import ray
from platform.run import main
ray.init(num_cpus=2, include_dashboard=False)
assert main([sys.argv[1]]) == 0  # the first study pays imports and Ray start-up
start = time.time()
assert main([sys.argv[2]]) == 0
print(json.dumps({"start": start, "end": time.time()}))
"""


def trial_window(tracking_uri: str, level_tag: bool) -> tuple[float, float]:
    """(first trial run start, last trial run end) in seconds since the epoch."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, max_results=1000)
    if level_tag:
        runs = [r for r in runs if r.data.tags.get("ltbias.level") == "trial"]
    return (min(r.info.start_time for r in runs) / 1000, max(r.info.end_time for r in runs) / 1000)


def one_side(side: str, workdir: Path, rep: int) -> dict:
    """Run one side in a fresh process; its start-up and tear-down seconds."""
    from platform.paths import REPO_ROOT

    folder = workdir / f"fixed-{side}-{rep}-{time.time_ns()}"
    plan = study_plan("stage1", workdir, folder, samples=1, epochs=1)
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PYTHONPATH=str(REPO_ROOT))
    if side == "ours":
        cmd = [sys.executable, "-m", "platform.run", plan.study_path]
        uri = plan.tracking_uri
    else:
        cells = folder / "cells.json"
        cells.write_text(json.dumps([{"id": c.id, "base_config": c.base_config, "space": c.space,
                                      "trials": c.trials} for c in plan.cells]), encoding="utf-8")
        cmd = [sys.executable, "-c", PEER_SCRIPT, str(cells), str(folder)]
        uri = f"sqlite:///{folder / 'peer-mlflow.db'}"
    start = time.time()
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    end = time.time()
    if proc.returncode != 0:
        raise RuntimeError(f"{side} exited {proc.returncode}: {proc.stderr[-2000:]}")
    first, last = trial_window(uri, level_tag=side == "ours")
    return {"start_to_first_trial_s": first - start, "last_trial_to_exit_s": end - last,
            "process_wall_s": end - start}


def warm_second_study(workdir: Path) -> dict:
    """The documented warm way (docs/MANY_STUDIES.md): studies run one after another in one
    Python process with Ray started once; the fixed cost of the second study."""
    from platform.paths import REPO_ROOT

    folder = workdir / f"fixed-warm-{time.time_ns()}"
    plans = [study_plan("stage1", workdir, folder / k, samples=1, epochs=1, name=f"warm-{k}")
             for k in ("first", "second")]
    # both studies track into one MLflow DB, as the default outputs/mlflow.db does
    for p in plans:
        text = Path(p.study_path).read_text(encoding="utf-8")
        Path(p.study_path).write_text(text.replace(p.tracking_uri, f"sqlite:///{folder / 'mlflow.db'}"),
                                      encoding="utf-8")
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run([sys.executable, "-c", WARM_SCRIPT, plans[0].study_path, plans[1].study_path],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"warm studies exited {proc.returncode}: {proc.stderr[-2000:]}")
    window = json.loads(proc.stdout.strip().splitlines()[-1])
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    exp = client.get_experiment_by_name("warm-second")
    runs = [r for r in client.search_runs([exp.experiment_id], max_results=100)
            if r.data.tags.get("ltbias.level") == "trial"]
    first = min(r.info.start_time for r in runs) / 1000
    last = max(r.info.end_time for r in runs) / 1000
    return {"start_to_first_trial_s": first - window["start"],
            "last_trial_to_return_s": window["end"] - last}


def run(workdir: Path, quick: bool = False) -> dict:
    """Alternate ours / peer processes; ratio of the medians of (start-up + tear-down)."""
    from benchmarks.studies import warm_zoo

    warm_zoo(study_plan("stage1", workdir, workdir / "fixed-zoo-warmup", samples=1, epochs=1))
    repeats = 1 if quick else 3
    sides: dict[str, list[dict]] = {"ours": [], "peer": []}
    for rep in range(repeats):
        for side in (("ours", "peer") if rep % 2 == 0 else ("peer", "ours")):
            sides[side].append(one_side(side, workdir, rep))
    warm = warm_second_study(workdir)
    fixed = {s: median([r["start_to_first_trial_s"] + r["last_trial_to_exit_s"] for r in runs])
             for s, runs in sides.items()}
    details = {"study": "stage-1 toy study: 2 cells (ce, la) x 1 Optuna trial, 1 epoch, local Ray",
               "runs": sides, "fixed_seconds_median": fixed,
               "start_to_first_trial_median_s": {s: median([r["start_to_first_trial_s"] for r in v])
                                                 for s, v in sides.items()},
               "last_trial_to_exit_median_s": {s: median([r["last_trial_to_exit_s"] for r in v])
                                               for s, v in sides.items()},
               "ours_warm_second_study_in_one_process (docs/MANY_STUDIES.md)": warm,
               "note": "the zoo model is pre-trained before timing; the stage-1 cache starts empty "
                       "for every run (the trials train)"}
    return result(NAME, goal_op="<=", goal_value=1.0, value=fixed["ours"] / fixed["peer"], unit="x",
                  measure="(start -> first trial + last trial -> exit) ours / hand-written peer",
                  details=rounded(details, 3))


if __name__ == "__main__":
    main_of(NAME)
