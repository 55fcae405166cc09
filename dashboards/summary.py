"""Turn a study's trial table into the numbers the report plots: honest selection, then seed spread.

Selection happens on the validation metric only (``objective``, default ``val/acc``) by the one rule
of ``trainables.selection`` that the driver also applies: within a cell, the runs of one
configuration (its replicate group, tagged by tracking) form a *config group*; the group with the
best mean objective is the cell's selected configuration, and the report shows its *test* metrics
as mean and standard deviation over the group's seeds. When a group has a single run that evaluated
several seeds itself (post-hoc trials report ``{metric}_std``), that reported spread is shown.
The values are those tracking logged, rounded to 4 significant digits (``contract.rounded``);
selection compares exactly those, as the driver does (``trainables.selection``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import pandas as pd

from dashboards.charts import Stat
from dashboards.data import PARAM_PREFIX
from trainables.contract import STAGE1_CELL
from trainables.selection import REPLICATES_METRIC, select_group
from trainables.stats import STD_SUFFIX, summarize

METHOD = PARAM_PREFIX + "method.name"
IMBALANCE = PARAM_PREFIX + "dataset.imbalance_ratio"
CONFOUNDERS = PARAM_PREFIX + "backdoor.confounders"
WEIGHTING = PARAM_PREFIX + "backdoor.weighting"
#: Metric a backdoor trial reports: the number of strata it actually combined (``backdoor.strata``
#: overrides ``backdoor.confounders``), written by trainables.methods.backdoor.
EFFECTIVE_M = "backdoor/M"
BACKDOOR = "backdoor"
GROUPS = ("many", "medium", "few")
#: Metrics are fractions in [0, 1] (trainables/metrics.py); the report shows percent.
PERCENT = 100.0
#: Readable names of common grid axes, for legends.
AXIS_NAMES = {
    IMBALANCE: "downstream IR",
    PARAM_PREFIX + "backbone.pretrain.imbalance_ratio": "pre-train IR",
    PARAM_PREFIX + "backbone.pretrain.alignment": "alignment",
    PARAM_PREFIX + "backbone.pretrain.view": "view",
    CONFOUNDERS: "M",
    WEIGHTING: "weighting",
    PARAM_PREFIX + "backdoor.strata_source": "strata",
    PARAM_PREFIX + "backdoor.stratum_method.name": "stratum method",
    PARAM_PREFIX + "method.tau": "tau",
}


def is_seed_param(column: str) -> bool:
    """Seed and runtime parameters: they say which repeat or where, not which configuration."""
    name = column[len(PARAM_PREFIX):] if column.startswith(PARAM_PREFIX) else column
    # a replicate sets the world seed, every toy member's pre-training seed (its prior seed pinned)
    # and the fine-tuning seed (trainables.config.apply_replicate)
    return (name in ("seed", "seeds", "dataset.world.seed") or name.startswith(("runtime.", "replicates."))
            or name.endswith((".pretrain.seed", ".pretrain.prior_seed")))


def axis_name(column: str) -> str:
    """A short legend name for a parameter column."""
    if column in AXIS_NAMES:
        return AXIS_NAMES[column]
    parts = column[len(PARAM_PREFIX):].split(".") if column.startswith(PARAM_PREFIX) else column.split(".")
    return ".".join(parts[-2:])


def usable(trials: pd.DataFrame, objective: str) -> pd.DataFrame:
    """Finished grid-cell trials with a finite objective (stage-1 prerequisites left out)."""
    if trials.empty or objective not in trials:
        return trials.iloc[0:0]
    mask = (trials["status"] == "FINISHED") & trials[objective].notna() & (trials["cell"] != STAGE1_CELL)
    return trials[mask]


def _config_params(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith(PARAM_PREFIX) and not is_seed_param(c)]


def searched_params(trials: pd.DataFrame) -> list[str]:
    """Parameter columns that vary inside at least one cell (Optuna's search space), seeds excluded."""
    params = _config_params(trials)
    if trials.empty or not params:
        return []
    distinct = trials.groupby("cell", dropna=False)[params].nunique(dropna=False).max()
    return [c for c in params if distinct[c] > 1]


def cell_searched_params(cell_trials: pd.DataFrame) -> list[str]:
    """Parameter columns that vary inside this one cell, seeds excluded."""
    params = _config_params(cell_trials)
    distinct = cell_trials[params].nunique(dropna=False) if params else pd.Series(dtype=int)
    return [c for c in params if distinct[c] > 1]


def grid_axes(grid_columns: Sequence[str], trials: pd.DataFrame) -> list[str]:
    """The grid axes (``param.<axis>`` columns, as tracking logged them) that take more than one
    value among ``trials``, method and downstream imbalance ratio first (the report's main axes)."""
    axes = [c for c in grid_columns if c in trials and trials[c].astype("string").nunique(dropna=False) > 1]
    return sorted(axes, key=lambda c: (c != METHOD, c != IMBALANCE, list(grid_columns).index(c)))


@dataclass(frozen=True)
class Selection:
    """The runs behind one plotted value: the seeds of the best config group for ``key``."""

    key: tuple
    runs: pd.DataFrame

    def stat(self, metric: str, scale: float = PERCENT) -> Stat:
        """Mean and spread of ``metric`` over the selected runs (seed spread, else reported ``_std``)."""
        if metric not in self.runs:
            return Stat(math.nan, None, 0)
        values = self.runs[metric].dropna()
        if values.empty:
            return Stat(math.nan, None, 0)
        summary = summarize(values.tolist())  # the one mean and sample s.d. (trainables.stats)
        std: float | None = None
        n = int(len(values))
        if len(values) >= 2:
            std = summary.sd
        elif metric + STD_SUFFIX in self.runs:
            reported = self.runs.loc[values.index, metric + STD_SUFFIX].dropna()
            std = float(reported.iloc[0]) if not reported.empty else None
        n = summary.n
        if len(values) == 1 and REPLICATES_METRIC in self.runs:  # one run that averaged its replicates
            reps = self.runs.loc[values.index, REPLICATES_METRIC].dropna()
            n = int(reps.iloc[0]) if not reps.empty else n
        return Stat(summary.mean * scale, None if std is None else std * scale, n)


def proposal_keys(trials: pd.DataFrame) -> pd.Series:
    """Per row, the config group it belongs to: (cell, group) from the trial's envelope tag (the
    replicates of one configuration share it), else (cell, values of the searched parameters)."""
    searched = searched_params(trials)
    keys = []
    groups = trials["group"] if "group" in trials else pd.Series([None] * len(trials), index=trials.index)
    for group, row in zip(groups, trials[["cell"] + searched].itertuples(index=False)):
        cell, *values = row
        keys.append((cell, "group", int(group)) if not pd.isna(group) else
                    (cell, "params") + tuple(_plain(v) for v in values))
    return pd.Series(keys, index=trials.index, dtype=object)


def select(trials: pd.DataFrame, by: Sequence[str], objective: str, mode: str = "max") -> list[Selection]:
    """Per value of ``by``: the config group (see proposal_keys) with the best mean ``objective``.

    Groups from several cells with the same ``by`` value (seeds as a grid axis) are pooled.
    """
    if trials.empty:
        return []
    keyed = trials.assign(_config=proposal_keys(trials), _by=_row_keys(trials, list(by)))
    out: list[Selection] = []
    for by_key, frame in keyed.groupby("_by", sort=False):
        # Best config per cell, then pool the cells that share the key (e.g. one cell per seed).
        chosen = []
        for _, cell_frame in frame.groupby("cell", sort=False):
            ordered = sorted(cell_frame.groupby("_config", sort=False), key=lambda kv: _sort_key(kv[0]))
            best = select_group({key: list(g[objective]) for key, g in ordered}, mode)
            if best is not None:
                chosen.append(cell_frame[cell_frame["_config"] == best])
        if not chosen:
            continue
        runs = pd.concat(chosen).drop(columns=["_config", "_by"])
        out.append(Selection(key=by_key, runs=runs))
    return out


def _sort_key(key: tuple) -> tuple:
    """Groups in the driver's order (envelope group number), other keys by their text."""
    return (0, key[2], "") if len(key) == 3 and key[1] == "group" else (1, 0, repr(key))


def _row_keys(frame: pd.DataFrame, columns: Iterable[str]) -> pd.Series:
    columns = list(columns)
    if not columns:
        return pd.Series([()] * len(frame), index=frame.index, dtype=object)
    return pd.Series([tuple(_plain(v) for v in row) for row in frame[columns].itertuples(index=False)],
                     index=frame.index, dtype=object)


def _plain(value: object) -> object:
    """A hashable, comparable value: NA becomes None, numpy scalars become Python ones."""
    if value is None or (not isinstance(value, (list, tuple)) and pd.isna(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def series_label(row: dict[str, object], axes: Sequence[str], empty: str = "all trials") -> str:
    """``la · pre-train IR=50``: the method, then the other axes as ``name=value``; ``empty`` if none."""
    parts = []
    for axis in axes:
        value = row.get(axis)
        shown = _format_value(value)
        parts.append(shown if axis == METHOD else f"{axis_name(axis)}={shown}")
    return " · ".join(parts) if parts else empty


def _format_value(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
