"""Bytes of the trial configs Tune carries (compact) and of the resolved configs, for study files.

    python -m benchmarks.tune_config_size studies/ablate_confounder.yaml ...

Builds each study's plan and asks its searcher for every trial (no Ray, no training; the Optuna
journal goes to a temporary folder, not outputs/); Tune keeps
several copies of each trial's config in its experiment state (issue 15 item 3).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile

from ray.tune.search import Searcher

from platform.plan import make_plan
from platform.searcher import CellSearcher, plan_bases
from platform.studyfile import load_study
from trainables.contract import resolve_config


def sizes(path: str) -> dict:
    """Trial count and mean / max bytes (JSON) of the compact and the resolved trial configs."""
    plan = make_plan(load_study(path), path)
    searcher, bases = CellSearcher(plan), plan_bases(plan)
    compact, full = [], []
    while (config := searcher.suggest(f"t{len(compact)}")) not in (Searcher.FINISHED, None):
        compact.append(len(json.dumps(config)))
        full.append(len(json.dumps(resolve_config(config, bases))))
    return {"study": path, "trials": len(compact), "tune_config_bytes_mean": round(statistics.mean(compact)),
            "tune_config_bytes_max": max(compact), "resolved_bytes_mean": round(statistics.mean(full)),
            "resolved_bytes_max": max(full)}


if __name__ == "__main__":
    os.environ["LTBIAS_OUTPUTS"] = tempfile.mkdtemp(prefix="ltbias-config-size-")
    for study in sys.argv[1:]:
        print(json.dumps(sizes(study)))
