"""Scaling: per-trial cost, driver memory, database sizes and Tune state from 25 to 1,000 trials.

The warm-cache backdoor search of ``benchmarks.studies`` (max_concurrent 2) runs through
``run_study`` at N = 25, 100, 400 and 1,000 Tune trials (N - 4 Optuna trials behind 4 cache-hit
prerequisites), each into fresh folders, in one Ray instance. Per run it records:
- per-trial wall cost in each fifth of the run (trials ended in that fifth / its seconds, from
  the trials' own end times), and last fifth / first fifth (goal: within 10 %);
- the driver's resident memory (sampled every 0.2 s) and its growth per trial after the first
  fifth (goal: below 0.2 MB per trial);
- the size of the MLflow DB, the Optuna storage and Tune's experiment state (every file of the
  experiment folder outside the trial folders), in all and per trial;
- every Tune experiment snapshot (``benchmarks.tune_state.snapshot_probe``): the state file's
  bytes per trial, snapshot seconds per trial of the run (the state write apart from the
  callbacks' part, where tracking waits for its queue) and in each fifth of it.
Then ``benchmarks.tune_state.state_sweep`` runs Tune alone to 2,000 trials (a trivial trial
reporting a recorded stage-2 result), the platform's packed report against the flat one it sent
before, alternating. The headline is the largest run's last-fifth / first-fifth per-trial cost;
the measure names the state's KB and the snapshot cost per trial.

    python -m benchmarks.bench_study_scaling [--quick]
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from benchmarks import main_of, result, rounded
from benchmarks.bench_overhead import timed_trainable
from benchmarks.studies import run_ours, start_ray, study_plan, warm_cache
from benchmarks.tune_state import snapshot_probe, snapshot_summary, state_sweep

NAME = "scaling"
SIZES, QUICK_SIZES = (25, 100, 400, 1000), (12, 24)
STATE_SIZES, QUICK_STATE_SIZES = (25, 100, 400, 2000), (24,)  # Tune alone (state_sweep)
PREREQUISITES = 4  # the stage-2 study's 2 pool members x 2 seeds


def rss_mb() -> float:
    """This process's resident set size in MB (Linux /proc; 0 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class RssSampler(threading.Thread):
    """Samples (wall time, RSS MB) every ``interval`` seconds until stopped."""

    def __init__(self, interval: float = 0.2):
        super().__init__(daemon=True)
        self.interval, self.samples, self._halt = interval, [], threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.samples.append((time.time(), rss_mb()))
            self._halt.wait(self.interval)

    def stop(self) -> list[tuple[float, float]]:
        self._halt.set()
        self.join()
        return self.samples


def folder_mb(path: Path, top_level_only: bool = False) -> float:
    """MB of the files under ``path`` (only its own files with ``top_level_only``)."""
    files = path.glob("*") if top_level_only else path.rglob("*")
    return sum(f.stat().st_size for f in files if f.is_file()) / 1e6


def fifths(ends: list[float], first_start: float) -> list[float]:
    """Seconds per trial in each fifth of the run, from the sorted trial end times."""
    n, out, prev = len(ends), [], first_start
    for k in range(5):
        lo, hi = k * n // 5, (k + 1) * n // 5
        if hi <= lo:
            continue
        out.append((ends[hi - 1] - prev) / (hi - lo))
        prev = ends[hi - 1]
    return out


def measure(workdir: Path, n: int) -> dict:
    """One run of ``n`` Tune trials (Ray already up)."""
    folder = workdir / f"scaling-{n}-{time.time_ns()}"
    plan = study_plan("stage2", workdir, folder, samples=n - PREREQUISITES)
    warm_cache(plan)
    log = folder / "trials.jsonl"
    sampler = RssSampler()
    sampler.start()
    with snapshot_probe() as snapshots:
        out = run_ours(plan, trainable=timed_trainable(str(log)))
    samples = sampler.stop()
    trials = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    ends = sorted(t["end"] for t in trials)
    start = min(t["start"] for t in trials)
    per_fifth = fifths(ends, start)
    after_first_fifth = [r for t, r in samples if t >= ends[len(ends) // 5 - 1]] or [samples[-1][1]]
    experiment = folder / "storage" / plan.study.name
    state_mb = folder_mb(experiment, top_level_only=True)
    optuna_mb = sum(f.stat().st_size for f in folder.glob("optuna*") if f.is_file()) / 1e6
    mlflow_mb = (folder / "mlflow.db").stat().st_size / 1e6
    return {"trials": len(trials), "failed": out["failed"], "study_wall_s": out["wall_s"],
            "seconds_per_trial_by_fifth": per_fifth,
            "last_fifth_over_first": per_fifth[-1] / per_fifth[0],
            "driver_rss_mb_start_end": [samples[0][1], samples[-1][1]],
            "driver_rss_growth_mb_per_trial_after_first_fifth":
                (after_first_fifth[-1] - after_first_fifth[0]) / max(1, len(trials) - len(trials) // 5),
            "mlflow_db_mb": mlflow_mb, "optuna_storage_mb": optuna_mb,
            "tune_experiment_state_mb": state_mb,
            "tune_state_kb_per_trial": 1000 * state_mb / len(trials),
            "mlflow_kb_per_trial": 1000 * mlflow_mb / len(trials),
            "tune_snapshots": snapshot_summary(snapshots, len(trials), ends, start)}


def run(workdir: Path, quick: bool = False) -> dict:
    """Run every size once, smallest first; headline = the largest run's last / first fifth."""
    import ray

    started = start_ray()
    try:
        runs = {n: measure(workdir, n) for n in (QUICK_SIZES if quick else SIZES)}
        sweep = state_sweep(workdir, QUICK_STATE_SIZES if quick else STATE_SIZES)
    finally:
        if started:
            ray.shutdown()
    largest = runs[max(runs)]
    rss = max(r["driver_rss_growth_mb_per_trial_after_first_fifth"] for r in runs.values())
    details = {"study": "warm-cache backdoor search of benchmarks.studies, max_concurrent 2",
               "runs": {str(n): r for n, r in runs.items()},
               "rss_growth_mb_per_trial (worst run)": rss,
               "rss_goal_met (< 0.2 MB per trial)": rss < 0.2,
               "per_trial_cost_goal_met (last fifth within 10 % of first)":
                   largest["last_fifth_over_first"] <= 1.1,
               "tune_state_alone": sweep}
    snap = largest["tune_snapshots"]
    packed = sweep["runs"]["packed (tune_result)"]
    flat = sweep["runs"]["flat (every metric a key)"]
    big = str(max(int(k) for k in packed))
    state = (f"; Tune state {snap.get('state_file_kb_per_trial', 0):.1f} KB/trial, its writes "
             f"{snap.get('state_write_ms_per_trial', 0):.1f} ms/trial; Tune alone at {big} trials: "
             f"{packed[big].get('state_file_kb_per_trial', 0):.1f} KB/trial (before "
             f"{flat[big].get('state_file_kb_per_trial', 0):.1f}), writes "
             f"{packed[big].get('state_write_ms_per_trial', 0):.2f} ms/trial (before "
             f"{flat[big].get('state_write_ms_per_trial', 0):.2f})")
    return result(NAME, goal_op="<=", goal_value=1.1, value=largest["last_fifth_over_first"],
                  unit="x", measure=f"per-trial wall cost, last fifth / first fifth of a "
                                    f"{largest['trials']}-trial study" + state,
                  details=rounded(details, 4))


if __name__ == "__main__":
    main_of(NAME)
