"""Read one study back from MLflow (layout: docs/ARCHITECTURE.md, section 5).

A study is an MLflow experiment named after the study. Each execution of the study is a run tagged
``ltbias.level=study``; its children are cell runs (``ltbias.level=cell``), whose children are trial
runs (``ltbias.level=trial``). Parameters are the flattened dotted trial config, stored by MLflow as
strings; this module turns each parameter column back into numbers or booleans where every value
of the column allows it, so that the report and the Parquet export agree on types.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from mlflow import MlflowClient
from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException

from trainables.contract import SPEC_ARTIFACT_DIR, SPEC_FILE, UI_QUERY, Level, Tag

LEVEL_TAG, CELL_TAG, SEED_TAG = Tag.LEVEL, Tag.CELL, Tag.SEED
TRIAL_ID_TAG, OPTUNA_TRIAL_TAG, ERROR_TAG, PARENT_TAG = Tag.TRIAL_ID, Tag.OPTUNA_TRIAL, Tag.ERROR, Tag.PARENT

PARAM_PREFIX = "param."
#: The columns every trial row has, before its ``param.*`` and metric columns.
TRIAL_COLUMNS = ["run_id", "run_name", "cell", "cell_run_id", "seed", "group", "optuna_trial", "trial_id",
                 "status", "error", "start_time", "end_time"]
#: The columns every cell row has, before its grid-value ``param.*`` columns.
CELL_COLUMNS = ["run_id", "run_name", "cell", "status", "selected_trials", "selected_runs"]
#: MLflow writes ``None`` config values as this string.
_NONE_STRINGS = {"None", "null", ""}

@dataclass(frozen=True)
class StudyData:
    """One execution of a study as MLflow recorded it: the study run, its cells and its trials."""

    study: str
    tracking_uri: str
    experiment_id: str
    study_run_id: str
    study_run_name: str
    study_tags: dict[str, str]
    #: the study run's params: the resolved study spec, flattened (``search.metric``, ...)
    study_params: dict[str, str]
    #: one row per cell run: CELL_COLUMNS, then its grid values as ``param.<axis>`` (typed as in the spec)
    cells: pd.DataFrame
    #: one row per trial run: TRIAL_COLUMNS, then ``param.<dotted>`` columns, then metric columns
    trials: pd.DataFrame
    param_columns: list[str] = field(default_factory=list)
    metric_columns: list[str] = field(default_factory=list)
    #: the resolved study spec tracking logged (``spec/study.yaml``); {} when the run has none
    spec: dict = field(default_factory=dict)

    @property
    def grid(self) -> dict[str, list]:
        """The grid axes (study path -> values, in file order) of the resolved spec."""
        return dict(self.spec.get("grid") or {})

    @property
    def grid_columns(self) -> list[str]:
        """The ``param.<axis>`` columns of the grid axes (cells and trials both have them)."""
        return [PARAM_PREFIX + axis for axis in self.grid]


class StudyNotFoundError(LookupError):
    """The tracking store holds no experiment or no study run for the requested study."""


def load_study(study: str, tracking_uri: str, study_run_id: str | None = None) -> StudyData:
    """Load the latest study run of experiment ``study`` (or ``study_run_id``) with cells and trials."""
    uri = tracking_uri
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        names = sorted(e.name for e in client.search_experiments(view_type=ViewType.ALL))
        raise StudyNotFoundError(
            f"no MLflow experiment named {study!r} in {uri}; experiments there: {names or 'none'}. "
            "Pass --tracking-uri of the store the study ran against, or run the study first.")
    runs = _all_runs(client, experiment.experiment_id)
    studies = [r for r in runs if r.data.tags.get(LEVEL_TAG) == Level.STUDY]
    if study_run_id is not None:
        studies = [r for r in studies if r.info.run_id == study_run_id]
        if not studies:
            raise StudyNotFoundError(f"run {study_run_id!r} is not a study run (tag {LEVEL_TAG}=study) "
                                     f"of experiment {study!r} in {uri}")
    if not studies:
        raise StudyNotFoundError(f"experiment {study!r} in {uri} has no run tagged {LEVEL_TAG}=study; "
                                 "was it written by platform.tracking?")
    root = max(studies, key=lambda r: r.info.start_time or 0)
    children = _children_index(runs)
    cell_runs = [r for r in children.get(root.info.run_id, []) if r.data.tags.get(LEVEL_TAG) == Level.CELL]
    trial_runs: list[tuple[Run, Run | None]] = []
    for cell_run in cell_runs:
        trial_runs += [(t, cell_run) for t in children.get(cell_run.info.run_id, [])
                       if t.data.tags.get(LEVEL_TAG) == Level.TRIAL]
    # Trials logged straight under the study run (no cell level) still belong to it.
    trial_runs += [(t, None) for t in children.get(root.info.run_id, [])
                   if t.data.tags.get(LEVEL_TAG) == Level.TRIAL]
    trials, params, metrics = _trials_frame(trial_runs)
    spec = _resolved_spec(client, root.info.run_id)
    cells = _cells_frame(cell_runs, dict(spec.get("grid") or {}))
    trials = _with_grid_values(trials, cells, list((spec.get("grid") or {}).keys()))
    params = list(dict.fromkeys(params + [c for c in cells.columns if c.startswith(PARAM_PREFIX)]))
    return StudyData(study=study, tracking_uri=uri, experiment_id=experiment.experiment_id,
                     study_run_id=root.info.run_id, study_run_name=root.info.run_name or "",
                     study_tags=dict(root.data.tags), study_params=dict(root.data.params), cells=cells, trials=trials,
                     param_columns=params, metric_columns=metrics, spec=spec)


def _resolved_spec(client: MlflowClient, run_id: str) -> dict:
    """The resolved study spec tracking logged on the study run ({} when there is none)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, f"{SPEC_ARTIFACT_DIR}/{SPEC_FILE}", tmp)
        except (MlflowException, OSError):
            return {}
        return yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}


def _cells_frame(cell_runs: list[Run], grid: dict[str, list]) -> pd.DataFrame:
    """One row per cell run; its grid values are the spec's own values, matched by the string MLflow
    stored (tracking logs a cell's grid values as its params)."""
    rows = []
    for r in cell_runs:
        tags = r.data.tags
        row: dict[str, Any] = {"run_id": r.info.run_id, "run_name": r.info.run_name, "cell": tags.get(CELL_TAG, ""),
                               "status": r.info.status,
                               "selected_trials": _split(tags.get(Tag.SELECTED_TRIAL)),
                               "selected_runs": _split(tags.get(Tag.SELECTED_RUN))}
        for axis, values in grid.items():
            logged = r.data.params.get(axis)
            row[PARAM_PREFIX + axis] = next((v for v in values if str(v) == logged), None)
        rows.append(row)
    return pd.DataFrame(rows, columns=CELL_COLUMNS + [PARAM_PREFIX + a for a in grid])


def _split(value: str | None) -> list[str]:
    return [v for v in (value or "").split(",") if v]


def _with_grid_values(trials: pd.DataFrame, cells: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """Trials with each grid axis column set from their cell run (the value the grid gave the cell)."""
    if not axes or trials.empty:
        return trials
    by_cell = cells.set_index("cell")
    columns = {}
    for axis in axes:
        column = PARAM_PREFIX + axis
        values = [_python(by_cell[column].get(c)) if c in by_cell.index else None for c in trials["cell"]]
        columns[column] = pd.Series(values, index=trials.index, dtype=_dtype(values))
    return trials.assign(**columns)


def _python(value: Any) -> Any:
    """A numpy scalar as the Python value it holds (pandas stores ints as numpy.int64)."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (list, dict, str)) else value


def _dtype(values: list) -> str:
    """The column type of grid values as the spec gave them (no parsing of strings)."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return "boolean"
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "Int64"
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return "float64"
    if all(isinstance(v, str) for v in present):
        return "string"
    return "object"


def _all_runs(client: MlflowClient, experiment_id: str) -> list[Run]:
    """Every active run of the experiment, following MLflow's pagination."""
    runs: list[Run] = []
    token: str | None = None
    while True:
        page = client.search_runs([experiment_id], max_results=5000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _children_index(runs: list[Run]) -> dict[str, list[Run]]:
    index: dict[str, list[Run]] = {}
    for run in runs:
        parent = run.data.tags.get(PARENT_TAG)
        if parent:
            index.setdefault(parent, []).append(run)
    for siblings in index.values():
        siblings.sort(key=lambda r: (r.info.start_time or 0, r.info.run_id))
    return index


def _trials_frame(trial_runs: list[tuple[Run, Run | None]]) -> tuple[pd.DataFrame, list[str], list[str]]:
    rows: list[dict[str, Any]] = []
    param_keys: set[str] = set()
    metric_keys: set[str] = set()
    for run, cell_run in trial_runs:
        tags = run.data.tags
        seed = tags.get(SEED_TAG)  # absent when the trial evaluates every seed itself
        row: dict[str, Any] = {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name or "",
            "cell": tags.get(CELL_TAG) or (cell_run.data.tags.get(CELL_TAG, "") if cell_run else ""),
            "cell_run_id": cell_run.info.run_id if cell_run else None,
            "seed": _to_int(seed),
            "group": _to_int(tags.get(Tag.GROUP)),
            "optuna_trial": _to_int(tags.get(OPTUNA_TRIAL_TAG)),
            "trial_id": tags.get(TRIAL_ID_TAG),
            "status": run.info.status,
            "error": tags.get(ERROR_TAG),
            "start_time": _timestamp(run.info.start_time),
            "end_time": _timestamp(run.info.end_time),
        }
        for key, value in run.data.params.items():
            row[PARAM_PREFIX + key] = value
            param_keys.add(PARAM_PREFIX + key)
        row.update(run.data.metrics)  # MLflow keeps the latest value of each metric: the final one
        metric_keys.update(run.data.metrics)
        rows.append(row)
    params = sorted(param_keys)
    metrics = sorted(metric_keys, key=_metric_order)
    raw = pd.DataFrame(rows, columns=TRIAL_COLUMNS + params + metrics)
    # Build every typed column first and the frame once (column-by-column assignment fragments it).
    columns = {c: raw[c] for c in TRIAL_COLUMNS}
    columns["seed"] = raw["seed"].astype("Int64")
    columns["group"] = raw["group"].astype("Int64")
    columns["optuna_trial"] = raw["optuna_trial"].astype("Int64")
    columns.update({c: coerce_param_column(raw[c]) for c in params})
    columns.update({c: raw[c].astype("float64") for c in metrics})
    return pd.DataFrame(columns, index=raw.index), params, metrics


def _metric_order(name: str) -> tuple[int, str]:
    """val/* first, then test/*, then the rest, so exported columns read in a useful order."""
    split = name.split("/", 1)[0]
    return ({"val": 0, "test": 1, "train": 2}.get(split, 3), name)


def _timestamp(ms: int | None) -> pd.Timestamp | None:
    return pd.Timestamp(ms, unit="ms", tz="UTC") if ms else None


def _to_int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def coerce_param_column(values: pd.Series) -> pd.Series:
    """Turn a column of MLflow param strings into Int64, float64 or boolean if every value allows it.

    Missing params and the strings MLflow writes for None become nulls; other columns stay strings.
    """
    cleaned: list[str | None] = [None if v is None or (isinstance(v, float) and math.isnan(v)) or v in _NONE_STRINGS
                                 else str(v) for v in values]
    present = [v for v in cleaned if v is not None]

    def typed(convert: Any, dtype: str) -> pd.Series:
        return pd.Series([None if v is None else convert(v) for v in cleaned], index=values.index, dtype=dtype)

    if not present:
        return typed(str, "string")
    if all(v in ("True", "False") for v in present):
        return typed(lambda v: v == "True", "boolean")
    try:
        numbers = [float(v) for v in present]
    except ValueError:
        return typed(str, "string")
    if all(math.isfinite(x) and x == int(x) and "." not in v and "e" not in v.lower() for x, v in zip(numbers, present)):
        return typed(int, "Int64")
    return typed(float, "float64")


def run_url(base_url: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI address of a run."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{UI_QUERY}"


def experiment_url(base_url: str, experiment_id: str) -> str:
    """The MLflow UI address of an experiment."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{UI_QUERY}"


