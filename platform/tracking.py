"""MLflow tracking of a study: experiment = study, runs nested study > cell > trial.

``MLflowStudyCallback`` is a Ray Tune callback running on the driver. It talks to MLflow only
through an explicit ``mlflow.MlflowClient(tracking_uri)`` (no global active run), so several
studies and the Tune driver never share hidden state. What each run carries, and every tag and
param name, is the contract of ``trainables.contract`` (its module docstring has the table);
``--resume`` reuses the latest study run with the same spec hash and experiment folder, and a
retried or resumed trial finds its run again by ``ltbias.trial_id``.
"""

from __future__ import annotations

import csv
import io
import math
import re
import subprocess
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable

import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.utils.validation import (MAX_ENTITY_KEY_LENGTH, MAX_METRICS_PER_BATCH,
                                     MAX_PARAM_VAL_LENGTH,
                                     MAX_PARAMS_TAGS_PER_BATCH, MAX_TAG_VAL_LENGTH)
from ray.tune import Callback

from platform.paths import REPO_ROOT, sqlite_path
from platform.retry import Retrying
from platform.searcher import plan_bases, study_name
from trainables.contract import (EXPERIMENT_KIND_TRAINING, GRID_PARAM_PREFIX, HEADLINE_METRICS,
                                 SPEC_ARTIFACT_DIR, SPEC_FILE, STAGE1_CELL, SUMMARY_ARTIFACT_DIR,
                                 SUMMARY_FILE, TRIAL_ARTIFACT_DIR, Level, Tag, display, flatten,
                                 full_result, grid_run_name, resolve_config, rounded, trial_meta, trial_params,
                                 trial_run_name, trial_tags)
from trainables.selection import finite

LEVEL, CELL, TRIAL_ID, STUDY_RUN = Tag.LEVEL, Tag.CELL, Tag.TRIAL_ID, Tag.STUDY_RUN
SPEC_HASH, STORAGE, GIT_COMMIT = Tag.SPEC_HASH, Tag.STORAGE, Tag.GIT_COMMIT
PARENT, LAST_STEP = Tag.PARENT, Tag.LAST_STEP
EXECUTION = Tag.EXECUTION

# Tune's own bookkeeping in every result: not measurements of the trial.
_TUNE_KEYS = frozenset({"timestamp", "pid", "done", "training_iteration", "time_since_restore",
                        "iterations_since_restore", "time_total_s", "time_this_iter_s",
                        "should_checkpoint", "trial_id", "date", "hostname", "node_ip",
                        "experiment_tag", "checkpoint_dir_name"})


# --------------------------------------------------------------------------- helpers

def finite_metrics(result: dict) -> dict[str, float]:
    """The trial's own finite numeric values of a Tune result (Tune bookkeeping and config dropped)."""
    out = {}
    for key, value in full_result(result).items():  # what the trial packed for Tune, too
        if key in _TUNE_KEYS or key == "config" or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[key] = float(value)
    return out


def result_step(result: dict) -> int:
    """The MLflow step of a report: its ``epoch`` when present, else Tune's training iteration."""
    epoch = result.get("epoch")
    if isinstance(epoch, (int, float)) and not isinstance(epoch, bool) and math.isfinite(epoch):
        return int(epoch)
    return int(result.get("training_iteration") or 0)


def git_commit(root: Path = REPO_ROOT) -> str | None:
    """``git rev-parse HEAD`` of the repo, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def param_key(name: str) -> str:
    """An MLflow-valid param name: characters MLflow refuses (``*`` of ``backbones.*.x``) become
    ``_``, and the name is cut to MLflow's 250-character key limit."""
    return re.sub(r"[^\w./\- :]", "_", str(name))[:MAX_ENTITY_KEY_LENGTH]


def _param_value(value: Any) -> str:
    return str(value)[:MAX_PARAM_VAL_LENGTH]


def _tag_value(value: Any) -> str:
    return str(value)[:MAX_TAG_VAL_LENGTH]


def _quote(value: str) -> str:
    return "'" + str(value).replace("'", "\\'") + "'"


def _chunks(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def error_summary(trial: Any) -> str:
    """``Type: message`` of a trial's latest error (the cause inside Ray's wrapper when available).

    Read from the driver's local copy of the error files: at ``on_trial_recover``/``on_trial_error``
    time they are not yet synced to the storage that ``Trial.get_pickled_error`` reads.
    """
    exc = None
    pickled = getattr(trial, "pickled_error_file", None)
    if pickled and Path(pickled).is_file():
        try:
            import ray.cloudpickle as cloudpickle
            with open(pickled, "rb") as fh:
                exc = cloudpickle.load(fh)
        except Exception:  # noqa: BLE001 - an unreadable error file must not break tracking
            exc = None
    if exc is not None:
        cause = getattr(exc, "cause", None) or exc
        first = (str(cause).strip().splitlines() or [""])[0]
        return f"{type(cause).__name__}: {first}".strip()
    text = ""
    error_file = getattr(trial, "error_file", None)
    if error_file and Path(error_file).is_file():
        text = Path(error_file).read_text(encoding="utf-8", errors="replace")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown error"


def default_artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Artifacts of a SQLite-tracked experiment go next to the DB (MLflow's default is ./mlruns)."""
    db = sqlite_path(tracking_uri)
    if db is None:
        return None  # a tracking server decides where artifacts go
    return (db.resolve().parent / "mlartifacts" / experiment).as_uri()


def study_params(spec: dict) -> dict[str, Any]:
    """The study run's params: the spec flattened, where a grid axis replaces the base value it sweeps
    (``grid.method.name = ['ce', 'la']`` and no ``method.name``)."""
    axes = list((spec.get("grid") or {}).keys())
    out = {}
    for key, value in flatten({k: v for k, v in spec.items() if k != "grid"}).items():
        if not any(key == a or key.startswith(a + ".") for a in axes):
            out[key] = value
    out.update({GRID_PARAM_PREFIX + axis: values for axis, values in (spec.get("grid") or {}).items()})
    return out


def headline_metrics(objective: str) -> list[str]:
    """The metrics a cell run carries: the objective, then ``HEADLINE_METRICS``."""
    return list(dict.fromkeys([objective, *HEADLINE_METRICS]))


def summary_table(rows: list[dict], metrics: list[str], trial_runs: dict[str, str]) -> str:
    """CSV of one row per cell: grid values, selection, headline metrics rounded for reading."""
    axes = list(dict.fromkeys(k for row in rows for k in (row.get("values") or {})))
    columns = ["cell", *axes, "selected_trials", "selected_runs", "n_trials", "n_failed", "n_seeds"]
    columns += [k for m in metrics for k in (m, f"{m}_std")]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for row in rows:
        ids = list(row.get("trial_ids") or [])
        record = [row["cell"], *[display((row.get("values") or {}).get(a)) for a in axes],
                  " ".join(ids), " ".join(trial_runs.get(t, "") for t in ids),
                  row.get("n_trials", 0), row.get("n_failed", 0), row.get("n_seeds", "")]
        record += [display(row.get(k)) if finite(row.get(k)) is not None else ""
                   for m in metrics for k in (m, f"{m}_std")]
        writer.writerow(record)
    return buffer.getvalue()


# --------------------------------------------------------------------------- the tracker

class StudyTracker:
    """Create or find the study, cell and trial runs of one study execution."""

    def __init__(self, tracking_uri: str, plan: Any, experiment_path: str, *, resume: bool):
        self.tracking_uri = tracking_uri
        self.plan = plan
        self.name = study_name(plan)
        self.experiment_path = experiment_path
        self.resume = resume
        self.study_run_id: str | None = None
        self._experiment_id: str | None = None
        self._cell_runs: dict[str, str] = {}
        self._trial_runs: dict[str, str] = {}
        self._steps: dict[str, tuple[int, set[str]]] = {}  # run id -> (last step, keys logged there)
        self._client: Any = None
        self.execution: str | None = None  # the execution id (names its Optuna studies)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_client"] = None  # reopened on the other side of a pickle (Tuner.restore)
        state.pop("_bases", None)  # recomputed from the plan
        return state

    def resolve(self, config: dict) -> dict:
        """A Tune trial config resolved against the plan's shared base configs (``plan_bases``)."""
        if getattr(self, "_bases", None) is None:
            self._bases = plan_bases(self.plan)
        return resolve_config(config, self._bases)

    @property
    def client(self) -> MlflowClient:
        """The MLflow client, opened on first use."""
        if self._client is None:  # every call retried while the store is locked or unreachable
            self._client = Retrying(MlflowClient(tracking_uri=self.tracking_uri),
                                    f"MLflow store {self.tracking_uri}")
        return self._client

    # ------------------------------------------------------------------ runs

    def experiment_id(self) -> str:
        """The study's experiment, created on first use."""
        if self._experiment_id is None:
            exp = self.client.get_experiment_by_name(self.name)
            if exp is None:
                # The kind tag makes the MLflow UI open the experiment on its training-runs table.
                self._experiment_id = self.client.create_experiment(
                    self.name, artifact_location=default_artifact_location(self.tracking_uri,
                                                                           self.name),
                    tags={Tag.EXPERIMENT_KIND: EXPERIMENT_KIND_TRAINING})
            else:
                if exp.lifecycle_stage == "deleted":  # deleted in the UI: runs cannot be created in it
                    self.client.restore_experiment(exp.experiment_id)
                self._experiment_id = exp.experiment_id
                if exp.tags.get(Tag.EXPERIMENT_KIND) != EXPERIMENT_KIND_TRAINING:
                    self.client.set_experiment_tag(self._experiment_id, Tag.EXPERIMENT_KIND,
                                                   EXPERIMENT_KIND_TRAINING)
        return self._experiment_id

    def _find(self, filter_string: str) -> Any | None:
        runs = self.client.search_runs([self.experiment_id()], filter_string=filter_string,
                                       max_results=1, order_by=["attributes.start_time DESC"])
        return runs[0] if runs else None

    def start_study(self) -> str:
        """The study run: reused on resume (same spec hash and experiment folder), else new."""
        if self.study_run_id is not None:
            return self.study_run_id
        spec_hash = str(getattr(self.plan, "spec_hash", ""))
        run = None
        if self.resume:
            run = self._find(f"tags.`{LEVEL}` = 'study' and tags.`{SPEC_HASH}` = {_quote(spec_hash)}"
                             f" and tags.`{STORAGE}` = {_quote(self.experiment_path)}")
        if run is not None:
            self.study_run_id = run.info.run_id
            self.client.update_run(self.study_run_id, status="RUNNING")
            return self.study_run_id
        tags = {LEVEL: Level.STUDY, SPEC_HASH: spec_hash, STORAGE: self.experiment_path,
                Tag.STUDY: self.name}
        if getattr(self, "execution", None):
            tags[EXECUTION] = str(self.execution)
        commit = git_commit()
        if commit:
            tags[GIT_COMMIT] = commit
        run = self.client.create_run(self.experiment_id(), tags=tags,
                                     run_name=f"{self.name} {time.strftime('%Y-%m-%d %H:%M:%S')}")
        self.study_run_id = run.info.run_id
        study = self.plan.study
        spec = study.model_dump(mode="json") if hasattr(study, "model_dump") else dict(study)
        self.log_params(self.study_run_id, study_params(spec))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp, SPEC_FILE)
            path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
            self.client.log_artifact(self.study_run_id, str(path), artifact_path=SPEC_ARTIFACT_DIR)
        return self.study_run_id

    def cell_run(self, cell_id: str) -> str:
        """The run of cell ``cell_id`` under the study run, found again or created."""
        if cell_id in self._cell_runs:
            return self._cell_runs[cell_id]
        study_run = self.start_study()
        run = self._find(f"tags.`{STUDY_RUN}` = {_quote(study_run)} and tags.`{LEVEL}` = 'cell'"
                         f" and tags.`{CELL}` = {_quote(cell_id)}")
        if run is None:
            cell = next((c for c in self.plan.cells if c.id == cell_id), None)
            values = dict(getattr(cell, "values", {}) or {})
            label = getattr(cell, "label", None) or cell_id
            tags = {LEVEL: Level.CELL, CELL: cell_id, PARENT: study_run, STUDY_RUN: study_run,
                    Tag.KIND: getattr(cell, "kind", "train") if cell else "train",
                    Tag.LABEL: _tag_value(label)}
            name = (grid_run_name(cell_id, values) if cell is not None
                    else f"{STAGE1_CELL} prerequisite fine-tunes")
            run = self.client.create_run(self.experiment_id(), tags=tags, run_name=name[:250])
            if values:
                self.log_params(run.info.run_id, values)
        self._cell_runs[cell_id] = run.info.run_id
        return run.info.run_id

    def trial_run(self, trial_id: str, config: dict) -> str:
        """The run of Tune trial ``trial_id``, found again (retry, resume) or created."""
        if trial_id in self._trial_runs:
            return self._trial_runs[trial_id]
        config = self.resolve(config)
        meta = trial_meta(config)
        cell_id = str(meta.get("cell") or STAGE1_CELL)
        cell_run = self.cell_run(cell_id)
        # Only a resumed study can have runs this process has not seen (a retry is in _trial_runs).
        run = self._find(f"tags.`{STUDY_RUN}` = {_quote(self.start_study())} and "
                         f"tags.`{TRIAL_ID}` = {_quote(trial_id)}") if self.resume else None
        if run is not None:
            run_id = run.info.run_id
            self._steps[run_id] = self._logged_steps(run_id, run.data.metrics)
            self.client.update_run(run_id, status="RUNNING")
        else:
            tags = {**trial_tags(meta), LEVEL: Level.TRIAL, TRIAL_ID: trial_id, CELL: cell_id,
                    PARENT: cell_run, STUDY_RUN: self.start_study()}
            run_id = self.client.create_run(self.experiment_id(), tags=tags,
                                            run_name=trial_run_name(meta, trial_id, config)[:250]).info.run_id
            self.log_params(run_id, trial_params(config))
        self._trial_runs[trial_id] = run_id
        return run_id

    def _logged_steps(self, run_id: str, keys: Iterable[str]) -> tuple[int, set[str]]:
        """(last step, keys logged at it) read from the run's own metric history, so that logging
        is idempotent whatever a killed driver managed to write (a tag written apart from the
        metrics could disagree with them)."""
        last, seen = -1, set()
        for key in keys:
            steps = [m.step for m in self.client.get_metric_history(run_id, key)]
            if not steps:
                continue
            top = max(steps)
            if top > last:
                last, seen = top, {key}
            elif top == last:
                seen.add(key)
        return last, seen

    def reconcile(self, trial_ids: Iterable[str]) -> list[str]:
        """Delete this study run's trial runs whose Tune trial is not among ``trial_ids`` (a run
        created for a trial that a killed driver never recorded; Tune ran that trial again under
        another id) and keep one run per trial (the most advanced). Returns the deleted run ids."""
        keep = set(trial_ids)
        runs = self.client.search_runs(
            [self.experiment_id()], max_results=50000,
            filter_string=f"tags.`{STUDY_RUN}` = {_quote(self.start_study())} and "
                          f"tags.`{LEVEL}` = 'trial'")
        by_trial: dict[str, list] = {}
        for run in runs:
            by_trial.setdefault(run.data.tags.get(TRIAL_ID, ""), []).append(run)
        deleted = []
        for trial_id, group in by_trial.items():
            rank = {"FINISHED": 2, "FAILED": 1}
            group.sort(key=lambda r: (rank.get(r.info.status, 0), r.info.start_time or 0), reverse=True)
            extra = group if trial_id not in keep else group[1:]
            for run in extra:
                self.client.delete_run(run.info.run_id)
                deleted.append(run.info.run_id)
            if trial_id in keep and group:
                self._trial_runs[trial_id] = group[0].info.run_id
        return deleted

    # ------------------------------------------------------------------ logging

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        """Log params (values cut to MLflow's limit) in batches of MLflow's maximum size."""
        items = [Param(param_key(k), _param_value(v)) for k, v in params.items()]
        for chunk in _chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(run_id, params=chunk, synchronous=True)

    def log_result(self, run_id: str, result: dict) -> None:
        """Log one report's finite metrics at step = epoch, rounded for reading (``contract.rounded``,
        the values the report selects on); a step already logged is not repeated."""
        step = result_step(result)
        last, seen = self._steps.get(run_id, (-1, set()))
        metrics = finite_metrics(result)
        if step < last:
            return  # replay after a restore from an earlier checkpoint: already in the history
        if step == last:
            metrics = {k: v for k, v in metrics.items() if k not in seen}
            seen = seen | set(metrics)
        else:
            seen = set(metrics)
        self._steps[run_id] = (step, seen)
        if not metrics:
            return
        now = int(time.time() * 1000)
        items = [Metric(k, rounded(v), now, step) for k, v in metrics.items()]
        chunks = list(_chunks(items, MAX_METRICS_PER_BATCH))
        for i, chunk in enumerate(chunks):
            tags = [RunTag(LAST_STEP, str(step))] if i == len(chunks) - 1 else []
            self.client.log_batch(run_id, metrics=chunk, tags=tags, synchronous=True)

    def log_summary(self, run_id: str, metrics: dict[str, Any], params: dict[str, Any]) -> None:
        """Log a cell's (or the study's) summary metrics, rounded as trial metrics are
        (``contract.rounded``), and the selected params (params once)."""
        items = [Metric(k, rounded(float(v)), int(time.time() * 1000), 0) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
        for chunk in _chunks(items, MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=chunk, synchronous=True)
        logged = self.client.get_run(run_id).data.params
        self.log_params(run_id, {k: v for k, v in params.items() if param_key(k) not in logged})

    def log_summary_table(self, run_id: str, table: str) -> None:
        """Log the per-cell summary table (CSV text) as ``summary/cells.csv``."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp, SUMMARY_FILE)
            path.write_text(table, encoding="utf-8")
            self.client.log_artifact(run_id, str(path), artifact_path=SUMMARY_ARTIFACT_DIR)

    def end(self, run_id: str, status: str) -> None:
        """Terminate a run with an MLflow status name (FINISHED, FAILED, KILLED)."""
        RunStatus.from_string(status)  # raises on a typo
        self.client.set_terminated(run_id, status=status)


class MLflowStudyCallback(Callback):
    """Ray Tune callback logging a study to MLflow as study > cell > trial runs.

    Trial-level logging runs off Tune's event loop, on one background thread that performs the
    calls in the order Tune made them; the loop only reads what it must from the trial (config,
    result, checkpoint path, error text) and goes on. ``flush`` waits for the queue and raises
    the first error a logging call hit; ``get_state``, ``interrupt``, ``finish`` and the end of
    the experiment flush first.
    """

    def __init__(self, tracking_uri: str, plan: Any, experiment_path: str, *, resume: bool = False):
        self.tracker = StudyTracker(tracking_uri, plan, experiment_path, resume=resume)
        self.plan = plan
        self._open: set[str] = set()  # trial runs started and not yet finished or failed
        self._worker: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []

    def __getstate__(self) -> dict:
        self.flush()
        state = dict(self.__dict__)
        state["_worker"], state["_pending"] = None, []  # a thread does not pickle (Tuner.restore)
        return state

    @property
    def study_run_id(self) -> str | None:
        """The study run of this execution (after ``setup``)."""
        return self.tracker.study_run_id

    # ------------------------------------------------------------------ the logging thread

    def _submit(self, fn: Any, *args: Any) -> None:
        """Run ``fn(*args)`` on the logging thread, after every call submitted before it."""
        if getattr(self, "_worker", None) is None:  # None after unpickling (or an older pickle)
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ltbias-mlflow")
        self._pending = [f for f in getattr(self, "_pending", [])
                         if not f.done() or f.exception() is not None]
        self._pending.append(self._worker.submit(fn, *args))

    def flush(self) -> None:
        """Wait until every submitted logging call has run; raise the first error one of them hit."""
        pending, self._pending = getattr(self, "_pending", []), []
        errors = [exc for f in pending if (exc := f.exception()) is not None]
        if errors:
            raise errors[0]

    # ------------------------------------------------------------------ Tune hooks

    def setup(self, stop: Any = None, num_samples: int | None = None,
              total_num_samples: int | None = None, **info: Any) -> None:
        """Open (or, on resume, find) the study run before the first trial starts."""
        self.tracker.start_study()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Create or reopen the trial's run (a retried trial keeps its run)."""
        self._submit(self._start, trial.trial_id, trial.config)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        """Log the report's metrics at step = epoch."""
        self._submit(self._result, trial.trial_id, trial.config, dict(result))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Log the final checkpoint's ``artifacts/`` and mark the run FINISHED."""
        self._submit(self._complete, trial.trial_id, trial.config, trial.checkpoint)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Mark the run FAILED with the error's first line (after Tune's retries are used up)."""
        self._submit(self._error, trial.trial_id, trial.config, error_summary(trial))

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Note a retry on the trial's run; the same run continues."""
        self._submit(self._recover, trial.trial_id, trial.config, trial.num_failures,
                     error_summary(trial))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Let every queued logging call finish before Tune returns; stop the logging thread."""
        self.flush()
        if getattr(self, "_worker", None) is not None:
            self._worker.shutdown(wait=True)
            self._worker = None

    # ------------------------------------------------------------------ on the logging thread

    def _start(self, trial_id: str, config: dict) -> None:
        self._open.add(self.tracker.trial_run(trial_id, config))

    def _result(self, trial_id: str, config: dict, result: dict) -> None:
        self.tracker.log_result(self.tracker.trial_run(trial_id, config), result)

    def _complete(self, trial_id: str, config: dict, checkpoint: Any) -> None:
        run_id = self.tracker.trial_run(trial_id, config)
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                artifacts = Path(folder, TRIAL_ARTIFACT_DIR)
                if artifacts.is_dir():  # its files at the run's artifact root: one level deep
                    self.tracker.client.log_artifacts(run_id, str(artifacts))
        self.tracker.end(run_id, "FINISHED")
        self._open.discard(run_id)

    def _error(self, trial_id: str, config: dict, summary: str) -> None:
        run_id = self.tracker.trial_run(trial_id, config)
        self.tracker.client.log_batch(run_id, tags=[RunTag(Tag.ERROR, _tag_value(summary))],
                                      synchronous=True)
        self.tracker.end(run_id, "FAILED")
        self._open.discard(run_id)

    def _recover(self, trial_id: str, config: dict, failures: int, summary: str) -> None:
        run_id = self.tracker.trial_run(trial_id, config)
        self.tracker.client.log_batch(run_id, tags=[RunTag(Tag.RETRIES, str(failures)),
                                                    RunTag(Tag.LAST_ERROR, _tag_value(summary))],
                                      synchronous=True)

    def interrupt(self) -> None:
        """Mark the study, its cells and unfinished trials KILLED (``--resume`` reopens them)."""
        self.flush()
        for run_id in sorted(self._open):
            self.tracker.end(run_id, "KILLED")
        self._open.clear()
        for run_id in self.tracker._cell_runs.values():
            self.tracker.end(run_id, "KILLED")
        self.tracker.end(self.tracker.start_study(), "KILLED")

    def finish(self, rows: list[dict], failed_trials: int, status: str = "FINISHED") -> None:
        """Log each cell's selected configuration to its run and close the cell and study runs."""
        self.flush()
        metrics_of = headline_metrics(self.plan.metric)
        for row in rows:
            run_id = self.tracker.cell_run(str(row["cell"]))
            metrics = {key: v for name in metrics_of
                       for key in (name, f"{name}_std") if (v := finite(row.get(key))) is not None}
            metrics["n_trials"] = row.get("n_trials", 0)
            params = {f"best.{k}": v for k, v in (row.get("best_config") or {}).items()}
            self.tracker.log_summary(run_id, metrics, params)
            trial_ids = list(row.get("trial_ids") or [])
            if trial_ids:
                self.tracker.client.set_tag(run_id, Tag.SELECTED_TRIAL, _tag_value(",".join(trial_ids)))
                selected = [self.tracker._trial_runs[t] for t in trial_ids if t in self.tracker._trial_runs]
                if selected:
                    self.tracker.client.set_tag(run_id, Tag.SELECTED_RUN, _tag_value(",".join(selected)))
        # A cell whose every trial failed is FAILED, with the first trial's reason.
        failed_cells = {str(r["cell"]): r.get("error") or "every trial failed" for r in rows
                        if r.get("n_trials") and r.get("n_failed") == r.get("n_trials")}
        for cell_id, run_id in self.tracker._cell_runs.items():
            if cell_id in failed_cells and status == "FINISHED":
                self.tracker.client.set_tag(run_id, Tag.ERROR, _tag_value(failed_cells[cell_id]))
                self.tracker.end(run_id, "FAILED")
            else:
                self.tracker.end(run_id, status)
        study_run = self.tracker.start_study()
        self.tracker.log_summary(study_run, {"failed_trials": failed_trials,
                                             "cells_done": len(rows)}, {})
        self.tracker.log_summary_table(study_run, summary_table(rows, metrics_of,
                                                                self.tracker._trial_runs))
        self.tracker.end(study_run, status)

    def get_state(self) -> dict | None:
        """Run ids known so far (a resumed driver would find them by tag anyway)."""
        self.flush()
        return {"study_run_id": self.tracker.study_run_id,
                "cell_runs": dict(self.tracker._cell_runs),
                "trial_runs": dict(self.tracker._trial_runs)}

    def set_state(self, state: dict) -> None:
        """Restore run ids saved by ``get_state`` (Tune calls this when it resumes an experiment);
        trial runs are found again by tag, with their last logged step."""
        self.tracker.resume = True
        if state.get("study_run_id") and self.tracker.study_run_id is None:
            self.tracker.study_run_id = state["study_run_id"]
            self.tracker.client.update_run(state["study_run_id"], status="RUNNING")
        self.tracker._cell_runs.update(state.get("cell_runs") or {})


def check_tracking(tracking_uri: str) -> None:
    """Raise ``ConnectionError`` naming the URI when the MLflow tracking store cannot be reached."""
    if tracking_uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request
        url = tracking_uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - user's server
                if resp.status != 200:
                    raise ConnectionError(f"{url} answered HTTP {resp.status}")
        except (urllib.error.URLError, OSError) as exc:
            raise ConnectionError(f"MLflow tracking server {tracking_uri} is unreachable ({exc}); "
                                  "start it (mlflow server ...) or pass another --tracking-uri"
                                  ) from exc
        return
    db = sqlite_path(tracking_uri)
    if db is not None:
        try:
            db.resolve().parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConnectionError(f"--tracking-uri {tracking_uri}: cannot create the folder of "
                                  f"{db} ({exc}); pass a writable path") from exc
    try:
        MlflowClient(tracking_uri=tracking_uri).search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001 - any failure means the store is unusable
        raise ConnectionError(f"MLflow tracking store {tracking_uri} cannot be opened: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; "
                              "pass a working --tracking-uri") from exc


__all__ = ["MLflowStudyCallback", "StudyTracker", "check_tracking", "error_summary", "finite_metrics",
           "flatten", "git_commit", "result_step"]
