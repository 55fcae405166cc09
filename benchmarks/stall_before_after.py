"""Before/after of the stall fix (issue 15), kept to reproduce the numbers in results/.

The searcher before the fix returned None from ``suggest`` while stage-1 prerequisites ran
(``old_suggest`` below restores that policy, as in platform/searcher.py at commit 286d9d1); the
current searcher never does. Both run the ``stage2_throughput`` measurement (warm-cache backdoor
search, max_concurrent 2), alternating, in one Ray instance:

    python -m benchmarks.stall_before_after WORKDIR SAMPLES REPEATS    # e.g. /tmp/w 24 2
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ray.tune.search import Searcher

from benchmarks.bench_stage2 import measure
from benchmarks.studies import start_ray
from platform import searcher as S

NEW_SUGGEST, NEW_COMPLETE = S.CellSearcher.suggest, S.CellSearcher.on_trial_complete


def old_suggest(self, trial_id):
    """``CellSearcher.suggest`` before the fix: None while stage-1 prerequisites run."""
    if self._prereq_emitted < len(self._prereqs):
        return NEW_SUGGEST(self, trial_id)
    done = getattr(self, "_old_prereq_done", set())
    finished = self._prereq_emitted == len(self._prereqs) and len(done) == len(self._prereqs)
    waiting = False
    for cid, cell in self._cells.items():
        if self._exhausted(cid):
            continue
        if S._field(cell, "kind", "train") != "train" and not finished:
            waiting = True
            continue
        return self._next_of_cell(cid, trial_id)
    return None if waiting else Searcher.FINISHED


def old_complete(self, trial_id, result=None, error=False):
    """``on_trial_complete`` that also counts finished prerequisites, as the old searcher did."""
    if self._trials.get(trial_id, ("",))[0] == S.STAGE1_CELL:
        self.__dict__.setdefault("_old_prereq_done", set()).add(trial_id)
    return NEW_COMPLETE(self, trial_id, result, error)


def main(work: Path, samples: int, repeats: int) -> dict:
    """Alternate before / after; print and return the figures of each run."""
    start_ray()
    out: dict[str, list] = {"before": [], "after": []}
    for rep in range(repeats):
        for side in (("before", "after") if rep % 2 == 0 else ("after", "before")):
            S.CellSearcher.suggest = old_suggest if side == "before" else NEW_SUGGEST
            S.CellSearcher.on_trial_complete = old_complete if side == "before" else NEW_COMPLETE
            m = measure(work, samples)
            keep = {k: m[k] for k in ("ratio", "study_wall_s", "stage2_span_s", "mean_compute_s",
                                       "mean_trials_running_at_once", "trials_per_worker_pid",
                                       "failed")}
            out[side].append(keep)
            print(side, json.dumps(keep), flush=True)
    S.CellSearcher.suggest, S.CellSearcher.on_trial_complete = NEW_SUGGEST, NEW_COMPLETE
    print("load", os.getloadavg())
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
