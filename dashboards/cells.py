"""Per-cell search views: Optuna parameter importances and the config groups behind them.

Each cell's Optuna study lives in the RDB next to the tracking DB under the name
``<study>/<cell id>`` (platform.searcher). When that study cannot be opened (another storage, a
grid cell that never asked Optuna), an in-memory Optuna study is rebuilt from the MLflow trials of
the cell: one Optuna trial per config group, valued by the group's mean objective over seeds, which
is what the searcher told Optuna.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import optuna
import pandas as pd
from optuna.distributions import (BaseDistribution, CategoricalDistribution, FloatDistribution,
                                  IntDistribution)
from optuna.importance import FanovaImportanceEvaluator, get_param_importances
from optuna.trial import TrialState

from dashboards.data import PARAM_PREFIX
from trainables.contract import sqlite_path
from dashboards.summary import _plain, cell_searched_params, proposal_keys

#: fANOVA is a random forest: a fixed seed makes the report reproducible.
IMPORTANCE_SEED = 0


@dataclass(frozen=True)
class ConfigGroup:
    """One proposal of a cell's search: its parameter values and the mean objective over its seeds."""

    params: dict[str, object]
    objective: float
    runs: int


@dataclass(frozen=True)
class CellSearch:
    """What the report shows of one cell's search."""

    cell: str
    searched: list[str]
    groups: list[ConfigGroup]
    importances: dict[str, float] | None
    #: where the importances come from, or why there are none
    note: str


def config_groups(cell_trials: pd.DataFrame, objective: str,
                  searched: list[str] | None = None) -> tuple[list[str], list[ConfigGroup]]:
    """The searched parameter columns of a cell (default: those that vary in it) and its config groups."""
    searched = cell_searched_params(cell_trials) if searched is None else searched
    if cell_trials.empty:
        return searched, []
    groups = []
    for _, frame in cell_trials.groupby(proposal_keys(cell_trials), sort=False):
        first = frame.iloc[0]
        groups.append(ConfigGroup({c: _plain(first[c]) for c in searched}, float(frame[objective].mean()), len(frame)))
    return searched, groups


def analyse_cell(study: str, cell: str, cell_trials: pd.DataFrame, objective: str, mode: str,
                 optuna_storage: str | None) -> CellSearch:
    """Importances of a cell's searched parameters, from its Optuna study or rebuilt from MLflow.

    The searched parameters are those that vary among the cell's runs plus those the cell's Optuna
    study proposed (a search whose proposals all coincided still shows its axes).
    """
    opt_study, source = _open_rdb_study(f"{study}/{cell}", optuna_storage)
    searched = cell_searched_params(cell_trials)
    if opt_study is not None:
        proposed = {PARAM_PREFIX + k for t in opt_study.get_trials(deepcopy=False) for k in t.params}
        searched += sorted(c for c in proposed if c in cell_trials.columns and c not in searched)
    # A parameter is active in a run when the run logged it (tracking logs only what a trial reads).
    searched = [c for c in searched if cell_trials[c].notna().all()]
    searched, groups = config_groups(cell_trials, objective, searched)
    if opt_study is None:
        opt_study, source = _rebuild_study(searched, groups, mode), "rebuilt from MLflow runs (" + source + ")"
    completed = [t for t in opt_study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if len(completed) < 2:
        return CellSearch(cell, searched, groups, None,
                          f"{len(completed)} completed trial(s): importances need at least 2 ({source})")
    # Only parameters active in every completed trial: a conditional parameter (set only for some
    # choices of another) is not comparable across trials, so fANOVA does not rank it.
    active = set.intersection(*(set(t.params) for t in completed))
    varied = [p for p in active if len({repr(t.params.get(p)) for t in completed}) > 1]
    if not varied:
        return CellSearch(cell, searched, groups, None,
                          f"all {len(completed)} proposals chose the same values: nothing to attribute ({source})")
    try:
        importances = get_param_importances(opt_study, evaluator=FanovaImportanceEvaluator(seed=IMPORTANCE_SEED),
                                            params=sorted(varied))
    except (ValueError, RuntimeError) as err:  # Optuna refuses degenerate studies with these
        return CellSearch(cell, searched, groups, None, f"Optuna could not compute importances: {err} ({source})")
    return CellSearch(cell, searched, groups, dict(importances), f"fANOVA over {len(completed)} trials, {source}")


def _open_rdb_study(name: str, storage: str | None) -> tuple[optuna.Study | None, str]:
    if not storage:
        return None, "no Optuna storage given"
    db = sqlite_path(storage) if "://" in storage else Path(storage).expanduser()
    if db is not None and not db.exists():  # opening a missing SQLite file would create it
        return None, f"no Optuna DB at {db}"
    opened = storage
    if "://" not in storage:  # a journal file (the platform's default, optuna.journal.log)
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend
        opened = JournalStorage(JournalFileBackend(str(db)))
    try:
        with _quiet_optuna():
            return optuna.load_study(study_name=name, storage=opened), f"Optuna study {name!r}"
    except KeyError:
        return None, f"no Optuna study {name!r} in the Optuna DB"


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Silence Optuna's INFO lines ('A new study created ...') while the report reads studies."""
    optuna_logger = logging.getLogger("optuna")
    level = optuna_logger.level
    optuna_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        optuna_logger.setLevel(level)


def _rebuild_study(searched: list[str], groups: list[ConfigGroup], mode: str) -> optuna.Study:
    distributions = {c[len(PARAM_PREFIX):]: _distribution([g.params[c] for g in groups]) for c in searched}
    with _quiet_optuna():
        study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for g in groups:
        if not math.isfinite(g.objective):
            continue
        params = {c[len(PARAM_PREFIX):]: _optuna_value(g.params[c], distributions[c[len(PARAM_PREFIX):]])
                  for c in searched}
        study.add_trial(optuna.trial.create_trial(value=g.objective, params=params, distributions=distributions))
    return study


def _distribution(values: list[object]) -> BaseDistribution:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        lo, hi = min(present), max(present)  # type: ignore[type-var]
        if lo < hi:
            if all(isinstance(v, int) for v in present):
                return IntDistribution(int(lo), int(hi))
            return FloatDistribution(float(lo), float(hi), log=lo > 0 and hi / lo >= 100)
    return CategoricalDistribution(sorted({str(v) for v in values}))


def _optuna_value(value: object, dist: BaseDistribution) -> object:
    return str(value) if isinstance(dist, CategoricalDistribution) else value
