"""Tune's experiment state: its bytes per trial and what its snapshots cost, as N grows.

Tune keeps every trial's entry (config, last result, per-metric statistics) in one experiment
state file that it rewrites whole at each snapshot (every 10 s or more, and whenever a trial has
saved ``num_to_keep`` checkpoints since the last one). ``SnapshotProbe`` times each snapshot in
the driver (``TuneController.save_to_dir``: Ray has no public hook for it) and the file it wrote.

``state_sweep`` isolates the state from the trials' compute: a plain Tuner whose trivial trial
reports a recorded stage-2 result, either as the platform reports it now
(``trainables.contract.tune_result``: the objective, ``epoch``, ``test/acc`` and one packed str
field) or every metric as its own key (as before), alternating the two at each size.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def snapshot_probe() -> Iterator[list[dict]]:
    """Within: every Tune experiment snapshot in this process appended as ``{end, seconds,
    bytes, trials, callbacks_seconds}`` (end: wall time; bytes: the state file it wrote; trials:
    entries it holds; callbacks_seconds: the part spent saving the callbacks' state, where the
    MLflow callback first waits for its logging queue)."""
    from ray.tune.callback import CallbackList
    from ray.tune.execution.tune_controller import TuneController

    original, original_callbacks = TuneController.save_to_dir, CallbackList.save_to_dir
    snapshots: list[dict] = []
    in_callbacks = [0.0]

    def timed_callbacks(self: Any, *args: Any, **kwargs: Any) -> None:
        start = time.perf_counter()
        try:
            original_callbacks(self, *args, **kwargs)
        finally:
            in_callbacks[0] += time.perf_counter() - start

    def timed_save(self: Any) -> None:
        in_callbacks[0] = 0.0
        start = time.perf_counter()
        original(self)
        seconds = time.perf_counter() - start
        try:
            size = Path(self.experiment_state_path).stat().st_size
        except OSError:
            size = 0
        snapshots.append({"end": time.time(), "seconds": seconds, "bytes": size,
                          "trials": len(self.get_trials()), "callbacks_seconds": in_callbacks[0]})

    TuneController.save_to_dir, CallbackList.save_to_dir = timed_save, timed_callbacks
    try:
        yield snapshots
    finally:
        TuneController.save_to_dir, CallbackList.save_to_dir = original, original_callbacks


def snapshot_summary(snapshots: list[dict], n_trials: int, ends: list[float] | None = None,
                     first_start: float | None = None) -> dict:
    """Bytes per trial of the last snapshot; snapshot seconds per trial of the run, in all and
    without the callbacks' part (the state write); per trial entry of one snapshot; and (with the
    trials' sorted end times) the state write per trial in each fifth of the run."""
    if not snapshots:
        return {"snapshots": 0}
    last = max(snapshots, key=lambda s: s["trials"])
    total = sum(s["seconds"] for s in snapshots)
    own = total - sum(s["callbacks_seconds"] for s in snapshots)  # Tune's state and the searcher's
    out: dict[str, Any] = {
        "snapshots": len(snapshots),
        "state_file_kb_per_trial": last["bytes"] / 1000 / max(1, last["trials"]),
        "state_file_mb_last": last["bytes"] / 1e6,
        "snapshot_s_total": total,
        "of_which_callbacks_s": total - own,
        "snapshot_ms_per_trial": 1000 * total / max(1, n_trials),
        "state_write_ms_per_trial": 1000 * own / max(1, n_trials),
        "largest_snapshot_s": max(s["seconds"] for s in snapshots),
        # what one snapshot costs per trial it holds (flat when an entry's size does not grow)
        "snapshot_us_per_trial_entry": 1e6 * sum(s["seconds"] for s in snapshots)
                                       / max(1, sum(s["trials"] for s in snapshots)),
    }
    if ends and first_start is not None and len(ends) >= 5:
        n, prev, per_fifth = len(ends), first_start, []
        for k in range(5):
            lo, hi = k * n // 5, (k + 1) * n // 5
            window_end = ends[hi - 1] if k < 4 else float("inf")
            spent = sum(s["seconds"] - s["callbacks_seconds"] for s in snapshots
                        if prev < s["end"] <= window_end)
            per_fifth.append(1000 * spent / max(1, hi - lo))
            prev = window_end
        out["state_write_ms_per_trial_by_fifth"] = per_fifth
    return out


def stage2_result(workdir: Path) -> dict:
    """The metrics one warm-cache stage-2 trial of ``benchmarks.studies`` reports (run here)."""
    import copy

    from benchmarks.studies import study_plan, warm_cache
    from trainables.trainable import run_trial

    class Keep:
        def __init__(self) -> None:
            self.metrics: dict = {}

        def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
            self.metrics = dict(metrics)

        def restore_dir(self) -> str | None:
            return None

    plan = study_plan("stage2", workdir, workdir / f"tune-state-sample-{time.time_ns()}", samples=1)
    warm_cache(plan)
    keep = Keep()
    run_trial(copy.deepcopy(plan.cells[0].base_config), keep)
    return keep.metrics


def _tuner_run(folder: Path, n: int, report: dict, metric: str) -> dict:
    """``n`` trivial trials, each reporting ``report`` once, through a plain Tuner (2 at a time,
    actors reused, Tune's default loggers, ``num_to_keep=2`` as the platform runs it)."""
    from ray import tune

    def reporting_trial(config: dict) -> None:
        tune.report(dict(report))

    # a compact trial config as the platform's searcher makes it (envelope, base key, own values)
    space = {"ltbias": {"cell": "c00", "stage": 2, "group": tune.randint(0, 10 ** 6), "optuna_trial": 0,
                        "seed": None, "replicate": None, "base": "0123456789abcdef",
                        "overrides": {"backdoor.confounders": tune.randint(1, 3),
                                      "backdoor.weighting": tune.choice(["uniform", "fitted"])}}}
    ends: list[float] = []

    class Ends(tune.Callback):
        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            ends.append(time.time())

    start = time.time()
    with snapshot_probe() as snapshots:
        tuner = tune.Tuner(
            tune.with_resources(reporting_trial, {"cpu": 1}), param_space=space,
            tune_config=tune.TuneConfig(num_samples=n, max_concurrent_trials=2, reuse_actors=True,
                                        metric=metric, mode="max"),
            run_config=tune.RunConfig(name=folder.name, storage_path=str(folder), verbose=0,
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                                      callbacks=[Ends()]))
        tuner.fit()
    wall = time.time() - start
    return {"trials": n, "wall_s": wall, **snapshot_summary(snapshots, n, sorted(ends), start)}


def state_sweep(workdir: Path, sizes: tuple[int, ...], metric: str = "val/acc") -> dict:
    """Per size: the packed report (now) and the flat one (before), alternating, in this Ray."""
    from trainables.contract import tune_result

    full = stage2_result(workdir)
    reports = {"packed (tune_result)": tune_result(full, metric), "flat (every metric a key)": full}
    runs: dict[str, dict] = {}
    for n in sizes:
        for label, report in reports.items():
            folder = workdir / f"tune-state-{n}-{label.split()[0]}-{time.time_ns()}"
            runs.setdefault(label, {})[str(n)] = _tuner_run(folder, n, report, metric)
    return {"metrics_reported_by_the_trial": len(full),
            "tune_keys": {label: len(r) for label, r in reports.items()},
            "report_json_bytes": {label: len(json.dumps(r)) for label, r in reports.items()},
            "runs": runs}
