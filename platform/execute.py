"""Run a planned study: one Ray Tune ``Tuner`` per study execution, tracked in MLflow.

``run_study(plan, args)`` checks that the tracking store and the storage are reachable (before
any trial starts), attaches to Ray (a cluster at ``--address``/``$RAY_ADDRESS``, else a local
instance), runs every trial through a ``CellSearcher`` and a scheduler (FIFO, or ASHA with one
bracket set per cell so that cells never stop each other's trials), and returns one row per cell:
the configuration selected on the validation metric, with its test metrics read only for it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import ray
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from platform import paths
from platform.errors import EnvironmentFailure, PlatformInputError
from platform.guard import DriverLock, check_address
from platform.progress import ProgressCallback
from platform.raystart import init_ray, shutdown_ray
from platform.searcher import CellSearcher, get_path, iter_groups, plan_bases, study_name
from trainables.contract import (STAGE1_CELL, flatten, full_result, reporting_objective, resolve_config,
                                 strip_meta, trial_meta)
from trainables.selection import REPLICATES_METRIC, finite, group_score, select_group
from platform.tracking import MLflowStudyCallback, check_tracking, git_commit
from trainables.stats import STD_SUFFIX, summarize
from trainables.errors import FATAL_KEY, is_deterministic, reason

TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "file", "databricks")
PLAN_STAMP = "ltbias_plan.json"


def _input_error(message: str) -> Exception:
    """A PlatformInputError (the CLI exits 2 on it) carrying ``message``."""
    return PlatformInputError(message)


# --------------------------------------------------------------------------- scheduling

class CellASHAScheduler(FIFOScheduler):
    """ASHA with separate brackets per cell: a trial only competes with trials of its own cell.

    One global ASHA would compare a cell at imbalance ratio 100 with one at ratio 10 and stop the
    harder cell's trials, which is the ablation's signal, not noise. Stage-1 prerequisites and
    post-hoc/ensemble trials (one report each) are never stopped.
    """

    def __init__(self, metric: str, mode: str, *, grace_period: int, reduction_factor: float,
                 max_t: int):
        super().__init__()
        self._metric, self._mode = metric, mode
        self._kwargs = dict(time_attr="training_iteration", metric=metric, mode=mode,
                            grace_period=grace_period, reduction_factor=reduction_factor,
                            max_t=max_t, stop_last_trials=False)  # cRT runs past max_t to its test report
        self._cells: dict[str, ASHAScheduler] = {}

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        """Metric and mode come from the plan; accept Tune's only when they agree."""
        return metric in (None, self._metric) and mode in (None, self._mode)

    def _of(self, trial: Any) -> ASHAScheduler | None:
        meta = trial_meta(trial.config)
        if meta.get("cell") in (None, STAGE1_CELL) or meta.get("stage") != 1:
            return None
        cell = str(meta["cell"])
        if cell not in self._cells:
            self._cells[cell] = ASHAScheduler(**self._kwargs)
        return self._cells[cell]

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        """Register the trial with its cell's ASHA."""
        if (asha := self._of(trial)) is not None:
            asha.on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        """CONTINUE or STOP, decided among the trial's own cell."""
        asha = self._of(trial)
        if asha is None or trial.trial_id not in asha._trial_info or FATAL_KEY in result:
            return TrialScheduler.CONTINUE
        return asha.on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        """Let the cell's ASHA record the final result."""
        asha = self._of(trial)
        if asha is not None and trial.trial_id in asha._trial_info:
            asha.on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        """Forget a removed trial."""
        asha = self._of(trial)
        if asha is not None and trial.trial_id in asha._trial_info:
            asha.on_trial_remove(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        """Forget an errored trial."""
        self.on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        """One ASHA summary per cell."""
        return "\n".join(f"{c}: {s.debug_string()}" for c, s in sorted(self._cells.items()))


def make_scheduler(plan: Any) -> TrialScheduler:
    """FIFO, or per-cell ASHA on the plan's metric with the study's settings."""
    spec = plan.study.scheduler
    if getattr(spec, "asha", None) is None:
        return FIFOScheduler()
    asha = spec.asha
    return CellASHAScheduler(plan.metric, plan.mode, grace_period=asha.grace_period,
                             reduction_factor=asha.reduction_factor,
                             max_t=asha.max_t or plan.study.finetune.epochs)


# --------------------------------------------------------------------------- checks and Ray

def check_storage(storage: str) -> None:
    """Raise PlatformInputError naming ``storage`` when it cannot be created or written."""
    if paths.is_local(storage):
        folder = paths.local_path(storage)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".write-probe-{os.getpid()}"
            probe.write_text("ok", encoding="utf-8")
            probe.unlink()
        except OSError as exc:
            raise _input_error(f"--storage {storage}: cannot write there ({exc}); pass a "
                               "writable folder or a reachable URI (s3://..., gs://...)") from exc
        return
    import pyarrow.fs
    try:
        fs, path = pyarrow.fs.FileSystem.from_uri(storage)
        fs.get_file_info(path)
    except Exception as exc:  # noqa: BLE001 - every failure means the same to the user
        raise _input_error(f"--storage {storage}: cannot be reached ({exc}); check the URI and "
                           "the credentials, or pass a local folder") from exc


def check_tracking_uri(uri: str) -> None:
    """Raise PlatformInputError for a tracking URI of a scheme MLflow has no store for, and
    EnvironmentFailure when the store cannot be reached."""
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else "file"
    if scheme not in TRACKING_SCHEMES:
        raise _input_error(f"--tracking-uri {uri}: unknown scheme {scheme!r}; use one of "
                           f"{', '.join(TRACKING_SCHEMES)} (e.g. sqlite:///outputs/mlflow.db or "
                           "http://host:5000)")
    try:
        check_tracking(uri)
    except ConnectionError as exc:
        raise EnvironmentFailure(str(exc)) from exc


class FatalFailures(tune.Callback):
    """Stop Tune from retrying a trial that failed deterministically (``trainables.errors``): its
    wrapper reports ``FATAL_KEY`` just before raising, and the trial's retry budget is then set to
    what it has used."""

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        """Seeing the fatal report, allow no further retry of this trial."""
        if FATAL_KEY in result:
            trial.max_failures = trial.num_failures


def trial_name(trial: Any) -> str:
    """``<cell>_<trial id>``: short Tune trial names and folders (Tune's default spells the config)."""
    return f"{trial_meta(trial.config).get('cell', 'trial')}_{trial.trial_id}"


def default_trainable() -> Callable[[dict], None]:
    """The shared trainable every trial runs (``trainables.trainable.tune_trainable``), imported
    where it runs: the driver never imports torch for it. A closure, so cloudpickle ships it by
    value and the import happens on the Ray worker."""
    def tune_trainable(config: dict) -> None:
        from trainables.trainable import tune_trainable as run

        return run(config)

    return tune_trainable


def without_meta(fn: Callable[[dict], Any], metric: str | None = None,
                 bases: dict[str, dict] | None = None) -> Callable[[dict], Any]:
    """``fn`` called with the resolved trial config minus the searcher's ``ltbias`` key (a
    TrialConfig dict).

    Tune's trial configs are compact (``trainables.contract.compact_config``); ``bases`` (the
    plan's ``plan_bases``) resolves them. The wrapper is a closure, so cloudpickle ships it by
    value, ``bases`` included, once with the trainable (Tune registers it in the object store, on
    a multi-node cluster too, and ``Tuner.restore`` is handed it again): Ray workers never import
    ``platform`` (which they would resolve to the standard-library module) to run it.
    """
    shared = dict(bases or {})

    def ltbias_trial(config: dict) -> Any:
        try:
            with reporting_objective(metric):  # Tune gets few keys (trainables.contract.tune_result)
                return fn(strip_meta(resolve_config(config, shared)))
        except Exception as exc:
            if is_deterministic(exc) and metric:
                # Tell the driver first (it then stops Tune from retrying), then fail for real.
                tune.report({FATAL_KEY: reason(exc), metric: math.nan})
            raise

    return ltbias_trial


# --------------------------------------------------------------------------- results

def _records(results: Any, bases: dict[str, dict]) -> list[dict]:
    """Plain trial records (trial_id, resolved config, status, result) from a Tune ResultGrid."""
    out = []
    for res in results:
        metrics = full_result(res.metrics or {})  # the metrics a trial packed for Tune, unpacked
        out.append({"trial_id": metrics.get("trial_id") or Path(res.path).name,
                    "config": resolve_config(res.config or {}, bases), "status": "ERROR" if res.error else "TERMINATED",
                    "result": metrics, "error": _error_text(res.error) if res.error else None})
    return out


ROW_PREFIXES = ("val/", "test/", "gain/", "baseline/", "pool/", "prior/", "backdoor/")
"""Result keys a CLI row carries (the selected configuration's mean over its members)."""


def _error_text(error: BaseException) -> str:
    """``Type: first line`` of a trial's error (the cause inside Ray's wrapper when there is one)."""
    cause = getattr(error, "cause", None) or error
    return reason(cause)


def _sampled(space: dict, config: dict) -> dict:
    """The searched values of a trial config: only the parameters whose ``when`` condition held
    (a conditional parameter that was never sampled keeps its base value and is left out)."""
    from platform.space import is_active

    values: dict = {}
    for path, dist in space.items():
        if is_active(dist, values, lambda p: get_path(config, p)):
            values[path] = get_path(config, path)
    return values


def select_rows(plan: Any, records: list[dict]) -> list[dict]:
    """One row per cell: its best configuration by the validation metric (seed-group mean for
    ``train`` cells), with that configuration's mean val/test metrics.

    Test numbers are read only for the selected configuration and never compared. A cell whose
    trials all failed or never reported the metric gets a row with ``selected=False``.
    """
    metric = plan.metric
    groups = iter_groups(records)
    rows = []
    for cell in plan.cells:
        cell_groups = {g: recs for (cid, g), recs in sorted(groups.items()) if cid == cell.id}
        row: dict[str, Any] = {"cell": cell.id, "label": cell.label, "kind": cell.kind,
                               "values": dict(cell.values), "best_config": {}, "n_trials": sum(map(len, cell_groups.values())),
                               "n_failed": sum(r["status"] == "ERROR"
                                               for recs in cell_groups.values() for r in recs),
                               "n_configs": len(cell_groups), "selected": False}
        errors = [r.get("error") for recs in cell_groups.values() for r in recs if r.get("error")]
        if errors:
            row["error"] = errors[0]
        best = select_group({g: [r["result"].get(metric) for r in recs if r["status"] != "ERROR"]
                             for g, recs in cell_groups.items()}, plan.mode)
        if best is not None:
            members = [r for r in cell_groups[best] if r["status"] != "ERROR"
                       and finite(r["result"].get(metric)) is not None]
            reported = finite(members[0]["result"].get(REPLICATES_METRIC))
            row.update(selected=True, metric=group_score(r["result"].get(metric) for r in members),
                       optuna_trial=trial_meta(members[0]["config"]).get("optuna_trial"),
                       best_config=_sampled(cell.space or {}, members[0]["config"]),
                       trial_ids=[r["trial_id"] for r in members],
                       # stage-2 trials average their replicates themselves and report how many
                       n_seeds=len(members) if cell.kind == "train"
                       else int(reported) if reported is not None else len(cell.replicates))
            keys = sorted({k for r in members for k in r["result"]
                           if k.startswith(ROW_PREFIXES) or k in (metric, "replicates")})
            for key in keys:
                vals = [v for r in members if (v := finite(r["result"].get(key))) is not None]
                if vals:
                    # one definition of mean and sample s.d. (trainables.stats); a stage-2 trial
                    # reports its own spread over replicates as <key>_std
                    summary = summarize(vals)
                    row[key] = summary.mean
                    if len(members) > 1 and not key.endswith(STD_SUFFIX):
                        row[key + STD_SUFFIX] = summary.sd
        rows.append(row)
    return rows


PRIOR_METRICS = ("prior/spearman", "prior/tv")


def prior_rows(records: list[dict]) -> list[dict]:
    """q_hat's error per backbone, from the stage-1 trials that report it (toy backbones).

    A backbone is its label (or display name) with its pre-training imbalance ratio, prior seed
    and prior agreement; its replicates (world and pre-training seeds) are summarised with
    ``trainables.stats.summarize``. A fine-tune of the same model with another method counts once.
    """
    groups: dict[str, dict[tuple, dict]] = {}
    for rec in records:
        result, config = rec.get("result") or {}, strip_meta(rec.get("config") or {})
        if rec.get("status") == "ERROR" or finite(result.get("prior/spearman")) is None:
            continue
        bb = config.get("backbone") or {}
        pre = bb.get("pretrain") or {}
        seed = pre.get("seed", 0)
        prior_seed = pre.get("prior_seed") if pre.get("prior_seed") is not None else seed
        name = f"{bb.get('label') or bb.get('name', '?')} ir{pre.get('imbalance_ratio', 0):g} prior{prior_seed}"
        if pre.get("prior_agreement") is not None:
            name += f" rho{pre['prior_agreement']:g}"
        model = (json.dumps((config.get("dataset") or {}).get("world"), sort_keys=True), seed)
        groups.setdefault(name, {}).setdefault(model, result)
    out = []
    for name, models in groups.items():
        row: dict[str, Any] = {"backbone": name, "n": len(models)}
        for key in PRIOR_METRICS:
            s = summarize([r[key] for r in models.values() if finite(r.get(key)) is not None])
            row[key], row[key + STD_SUFFIX] = s.mean, s.sd
        out.append(row)
    return out


# --------------------------------------------------------------------------- the run

def _new_execution() -> str:
    """The id of a fresh study execution (its Optuna studies are named after it)."""
    return time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def _identity(plan: Any) -> dict | None:
    """The resolved spec the plan's hash is made of (``Study.identity``), None if unknown."""
    study = getattr(plan, "study", None)
    return study.identity() if hasattr(study, "identity") else None


def _stamp(experiment: Path, plan: Any) -> str:
    """Record the spec hash (with the resolved spec it hashes and the code's commit, so a refused
    resume can say what changed) and a new execution id in a fresh experiment folder; return the id."""
    execution = _new_execution()
    experiment.mkdir(parents=True, exist_ok=True)
    (experiment / PLAN_STAMP).write_text(json.dumps(
        {"spec_hash": plan.spec_hash, "study": study_name(plan), "total_trials": plan.total_trials,
         "execution": execution, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
         "git_commit": git_commit(), "spec": _identity(plan)}, indent=1),
        encoding="utf-8")
    return execution


def read_execution(experiment: Path) -> str | None:
    """The execution id recorded in a local experiment folder (None before the first run)."""
    try:
        return json.loads((experiment / PLAN_STAMP).read_text(encoding="utf-8")).get("execution")
    except (OSError, ValueError):
        return None


def spec_changes(old: dict, new: dict, limit: int = 6) -> list[str]:
    """``path: old -> new`` for each flattened path where two resolved specs differ (at most
    ``limit``, then ``... and N more``)."""
    a, b = flatten(old), flatten(new)

    def shown(spec: dict, key: str) -> str:
        return json.dumps(spec[key]) if key in spec else "(absent)"

    lines = [f"{k}: {shown(a, k)} -> {shown(b, k)}"
             for k in sorted(set(a) | set(b)) if shown(a, k) != shown(b, k)]  # 1 vs 1.0 differs too
    return lines[:limit] + ([f"... and {len(lines) - limit} more"] if len(lines) > limit else [])


def _check_resume(experiment: Path, plan: Any) -> None:
    """Refuse to resume a study whose resolved spec changed, saying what changed and why it can
    (the study file, or the code resolving the same file differently) and what to do."""
    path = experiment / PLAN_STAMP
    if not path.exists():
        return
    stamp = json.loads(path.read_text(encoding="utf-8"))
    old = stamp.get("spec_hash")
    if old == plan.spec_hash:
        return
    then, now = stamp.get("git_commit"), git_commit()
    if then and now and then == now:
        why = (f" Here the code is at the commit it started with ({then[:10]}): unless it has "
               "uncommitted changes, the study changed.")
    elif then and now:
        why = (f" Here the code changed since it started (commit {then[:10]}, now {now[:10]}), so "
               "either may be the cause.")
    else:
        why = ""
    spec = _identity(plan)
    if isinstance(stamp.get("spec"), dict) and spec is not None:
        what = "what differs, as started -> now: " + "; ".join(spec_changes(stamp["spec"], spec))
    else:
        what = ("its stamp predates recording the resolved spec, so what differs cannot be listed "
                f"({PLAN_STAMP} has only the hash)")
    raise _input_error(
        f"--resume: {experiment} holds study {study_name(plan)!r} with spec hash {str(old)[:12]}, "
        f"but the study now resolves to {plan.spec_hash[:12]}; {what}. The hash is of the resolved "
        "spec (every default filled in): it changes when the study file (or a --set) is edited, "
        "and also when the code resolves the same file differently (e.g. since methods own their "
        f"fields, a method block holds only the fields of its method).{why} Trials already run "
        "used the old spec and cannot continue under the new one: start the study afresh (move "
        "that folder away, or change the study's name, and run without --resume), or finish the "
        "old run with the study file and code it started with")


def run_study(plan: Any, args: Any, *, trainable: Callable[[dict], None] | None = None,
              progress_interval_s: float = 5.0) -> Any:
    """Run every trial of ``plan`` through one Ray Tune Tuner, track it in MLflow, select per cell.

    ``args`` is the ``python -m platform.run`` namespace (address, resume; storage and tracking
    were already resolved into the plan; ``resume_if_any`` makes ``--resume`` of a study with
    nothing to continue start it). ``trainable`` replaces the shared trainable (tests).

    The driver holds the study's ``DriverLock`` throughout: a second driver of the same study and
    storage raises PlatformInputError naming this one.
    """
    name = study_name(plan)
    storage = plan.storage or getattr(args, "storage", None) or paths.default_storage()
    tracking_uri = plan.tracking_uri or getattr(args, "tracking_uri", None) or paths.default_tracking_uri()
    check_tracking_uri(tracking_uri)
    check_storage(storage)
    address = getattr(args, "address", None) or os.environ.get("RAY_ADDRESS")
    if address and address != "local" and not ray.is_initialized():
        check_address(address)  # before anything is written: a cluster that is not there
    lock = DriverLock(storage, name).acquire()  # one driver per study and storage, until we return
    try:
        return _run_locked(plan, args, name, storage, tracking_uri, trainable, progress_interval_s)
    finally:
        lock.release()


def _run_locked(plan: Any, args: Any, name: str, storage: str, tracking_uri: str,
                trainable: Callable[[dict], None] | None, progress_interval_s: float) -> Any:
    from platform.plan import StudyOutcome

    resume = bool(getattr(args, "resume", False))
    experiment_uri = f"{storage.rstrip('/')}/{name}"
    local_experiment = paths.local_path(experiment_uri) if paths.is_local(storage) else None
    can_restore = tune.Tuner.can_restore(experiment_uri)
    if can_restore and not resume:
        raise _input_error(
            f"study {name!r} already has results in {experiment_uri}; pass --resume to continue "
            "it (finished trials are kept, nothing is rerun), or move that folder away to start over")
    if resume and not can_restore:
        if not getattr(args, "resume_if_any", False):
            raise _input_error(
                f"--resume: there is no run of study {name!r} to continue in {experiment_uri}; "
                "check --storage (and the study name), or drop --resume to start the study")
        resume = False  # --resume-if-any: nothing to continue, so start
    execution = None
    if local_experiment is not None:
        if resume:
            _check_resume(local_experiment, plan)
            execution = read_execution(local_experiment)
        else:
            execution = _stamp(local_experiment, plan)
    execution = execution or _new_execution()

    bases = plan_bases(plan)  # the shared base configs Tune's compact trial configs refer to
    fn = without_meta(trainable or default_trainable(), plan.metric, bases)
    resources = {"cpu": float(plan.resources["cpu"]), "gpu": float(plan.resources["gpu"])}
    # Nothing to restore means a fresh execution: it must not reopen an older study run.
    tracker = MLflowStudyCallback(tracking_uri, plan, experiment_uri, resume=resume)
    tracker.tracker.execution = execution
    log_path = (local_experiment / "progress.log") if local_experiment is not None else None
    progress = ProgressCallback(name, plan.metric, plan.mode, log_path,
                                interval_s=progress_interval_s, total_trials=plan.total_trials,
                                bases=bases)
    # num_to_keep forces an experiment snapshot after checkpoints; on a study of short trials
    # Tune then warns every few seconds about snapshot frequency, which drowns the progress line.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune's default loggers include TensorBoard's, whose tensorboardX imports torch into the
    # driver (seconds before the first trial); MLflow is the record here, so keep only Tune's
    # own result.json and progress.csv per trial.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    callbacks = [tracker, progress, FatalFailures(), JsonLoggerCallback(), CSVLoggerCallback()]
    started = init_ray(getattr(args, "address", None))
    try:
        if resume and can_restore:
            tuner = tune.Tuner.restore(experiment_uri, trainable=tune.with_resources(fn, resources),
                                       resume_errored=True)
            _use_callbacks(tuner, callbacks)
        else:
            searcher = CellSearcher(plan, sampler_seed=plan.study.search.seed, execution=execution)
            if searcher.total_trials != plan.total_trials:
                raise RuntimeError(f"plan counts {plan.total_trials} trials but the searcher emits "
                                   f"{searcher.total_trials}; platform.plan and platform.searcher "
                                   "disagree on cell sizes")
            max_concurrent = int(getattr(args, "max_concurrent", None) or plan.max_concurrent or 0)
            tuner = tune.Tuner(
                tune.with_resources(fn, resources),
                tune_config=tune.TuneConfig(
                    search_alg=searcher, scheduler=make_scheduler(plan),
                    num_samples=plan.total_trials, max_concurrent_trials=max_concurrent or None,
                    metric=plan.metric, mode=plan.mode, reuse_actors=True,
                    trial_name_creator=trial_name, trial_dirname_creator=trial_name),
                run_config=tune.RunConfig(
                    name=name, storage_path=storage, verbose=0,
                    failure_config=tune.FailureConfig(max_failures=plan.study.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                    callbacks=callbacks))
        with _signal_handlers_kept():
            results = tuner.fit()
        callback = _find_tracker(tuner) or tracker
        finished = results.num_terminated + results.num_errors
        if finished < plan.total_trials:
            # Tune returns normally after Ctrl-C (or a stop request) with unfinished trials.
            callback.interrupt()
            raise KeyboardInterrupt(f"study {name!r} stopped with {finished}/{plan.total_trials} "
                                    f"trials finished; continue it with --resume")
        records = _records(results, bases)
        callback.tracker.reconcile(r["trial_id"] for r in records)  # no orphan, no duplicate run
        rows = select_rows(plan, records)
        failed = sum(r["status"] == "ERROR" for r in records)
        callback.finish(rows, failed)
        return StudyOutcome(rows=rows, failed_trials=failed, total_trials=len(records),
                            study_run_id=callback.study_run_id, tracking_uri=tracking_uri,
                            prior_rows=prior_rows(records))
    finally:
        if started:
            shutdown_ray()


@contextlib.contextmanager
def _signal_handlers_kept() -> Any:
    """Put back the SIGINT (and SIGUSR1) handlers Tune's ``fit`` replaces: Tune restores them only
    when a signal arrives, so after a study that ends normally its handler (which just sets that
    finished run's stop flag) would swallow the next Ctrl-C of a second study in the same process."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    kinds = [s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGUSR1", None)) if s is not None]
    saved = {s: signal.getsignal(s) for s in kinds}
    try:
        yield
    finally:
        for s, handler in saved.items():
            if handler is not None:
                signal.signal(s, handler)


def _run_config(tuner: Any) -> Any:
    # Ray keeps the RunConfig on its internal tuner; there is no public accessor after restore.
    local = getattr(tuner, "_local_tuner", None)
    return local.get_run_config() if local is not None else None


def _use_callbacks(tuner: Any, callbacks: list) -> None:
    """Run a restored Tuner with this execution's callbacks instead of the unpickled ones, so that
    tracking uses today's URI and knows it is resuming (Tune then restores their saved state)."""
    config = _run_config(tuner)
    # Tune restores callback states by position; the loggers (stateless) come last, and a tuner.pkl
    # from before they were listed here (Tune added them itself then) lacks them.
    kinds = lambda cbs: [type(c) for c in cbs if not isinstance(c, (JsonLoggerCallback, CSVLoggerCallback))]
    if config is not None and kinds(config.callbacks or []) == kinds(callbacks):
        config.callbacks = callbacks
        return
    for cb in getattr(config, "callbacks", None) or []:  # an older tuner.pkl: resume in place
        if isinstance(cb, MLflowStudyCallback):
            cb.tracker.resume = True


def _find_tracker(tuner: Any) -> MLflowStudyCallback | None:
    """The tracking callback the Tuner ran with."""
    for cb in getattr(_run_config(tuner), "callbacks", None) or []:
        if isinstance(cb, MLflowStudyCallback):
            return cb
    return None


__all__ = ["CellASHAScheduler", "FatalFailures", "check_storage", "check_tracking_uri",
           "default_trainable", "make_scheduler", "prior_rows", "read_execution", "run_study",
           "select_rows"]
