"""Turn a study's trial table into the numbers the report plots: honest selection, then seed spread.

Selection happens on the validation metric only (``objective``, default ``val/acc``): within a cell,
the runs of one Optuna proposal (its seeds) form a *config group*; the group with the best mean objective is the cell's selected configuration, and the
report shows its *test* metrics as mean and standard deviation over the group's seeds. When a group
has a single run that evaluated several seeds itself (post-hoc trials report ``{metric}_std``), that
reported spread is shown instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import pandas as pd

from dashboards.charts import Stat
from dashboards.data import PARAM_PREFIX
from trainables.stats import STD_SUFFIX, summarize

METHOD = PARAM_PREFIX + "method.name"
IMBALANCE = PARAM_PREFIX + "dataset.imbalance_ratio"
CONFOUNDERS = PARAM_PREFIX + "backdoor.confounders"
WEIGHTING = PARAM_PREFIX + "backdoor.weighting"
BACKDOOR = "backdoor"
#: Cell id of the stage-1 prerequisite trials (platform.searcher.STAGE1_CELL): not a grid cell.
STAGE1_CELL = "stage1"
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


def grid_axes(trials: pd.DataFrame) -> list[str]:
    """Cell-level parameters that differ between cells, seeds excluded, without redundant aliases.

    Two columns that split the cells identically (``backbone.pretrain.imbalance_ratio`` and
    ``pool.0.pretrain.imbalance_ratio`` set by one grid axis) keep only the first.
    """
    searched = set(searched_params(trials))
    cells = trials.drop_duplicates("cell")
    candidates = [c for c in _config_params(cells) if c not in searched]
    distinct = cells[candidates].nunique(dropna=False) if candidates else pd.Series(dtype=int)
    axes: list[str] = []
    partitions: list[tuple] = []
    for column in sorted(candidates):
        if distinct[column] <= 1:
            continue
        partition = tuple(pd.factorize(cells[column].astype("string").fillna("<NA>"))[0])
        if partition in partitions:
            continue
        partitions.append(partition)
        axes.append(column)
    # The method and the imbalance ratio lead: they are the report's main axes.
    return sorted(axes, key=lambda c: (c != METHOD, c != IMBALANCE, c))


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
        if len(values) >= 2:
            std = summary.sd
        elif metric + STD_SUFFIX in self.runs:
            reported = self.runs.loc[values.index, metric + STD_SUFFIX].dropna()
            std = float(reported.iloc[0]) if not reported.empty else None
        return Stat(summary.mean * scale, None if std is None else std * scale, summary.n)


def proposal_keys(trials: pd.DataFrame) -> pd.Series:
    """Per row, the config group it belongs to: (cell, Optuna trial number) when tracking tagged one,
    else (cell, values of the searched parameters); the seeds of one proposal share a key."""
    searched = searched_params(trials)
    keys = []
    for row in trials[["cell", "optuna_trial"] + searched].itertuples(index=False):
        cell, number, *values = row
        keys.append((cell, "optuna", int(number)) if not pd.isna(number) else
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
            means = cell_frame.groupby("_config", sort=False)[objective].mean()
            best = means.idxmax() if mode == "max" else means.idxmin()
            chosen.append(cell_frame[cell_frame["_config"] == best])
        runs = pd.concat(chosen).drop(columns=["_config", "_by"])
        out.append(Selection(key=by_key, runs=runs))
    return out


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
