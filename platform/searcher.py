"""The study's Tune searcher: stage-1 prerequisites first, then every cell, one Optuna study per cell.

``CellSearcher`` emits every trial of a ``Plan`` to one ``ray.tune.Tuner``:

1. the plan's prerequisite stage-1 trials (cell id ``stage1``), which fill the stage-1 cache that
   post-hoc and ensemble cells read;
2. each cell's trials. A cell with a search space gets its own Optuna study
   (``<study>/<cell id>``) in the plan's RDB storage; ``study.ask()`` then define-by-run sampling
   (``platform.space.sample``, conditional parameters skipped) proposes parameters that are
   written into the cell's base trial config by dotted path. A ``train`` cell runs each Optuna
   trial once per replicate (a *seed group*; ``trainables.config.apply_replicate`` sets its world,
   pre-training and fine-tuning seeds); Optuna is told the mean of the group's final metric once
   the whole group has finished. Members that errored or never reported the metric are left out of
   the mean; a group with no usable member is told FAIL. Post-hoc and ensemble cells run one Tune
   trial per Optuna trial (the trainable evaluates all seeds itself) and wait until every
   prerequisite trial has finished.

Trial configs stay valid ``TrialConfig`` dicts plus one top-level key, ``ltbias`` (cell, stage,
optuna_trial, seed), that the trainable strips before validating and that tracking and reporting
read. The searcher's bookkeeping is pickled by ``save``; Optuna's state lives in its RDB, so
``Tuner.restore`` continues where the study stopped without rerunning a finished trial.
"""

from __future__ import annotations

import copy
import math
import pickle
import statistics
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterable

import optuna
from optuna.distributions import (BaseDistribution, CategoricalDistribution, FloatDistribution,
                                  IntDistribution)
from optuna.trial import TrialState
from ray.tune.search import Searcher

from platform.plan import apply_params
from platform.space import grid_values, kind_of, sample

META_KEY = "ltbias"
"""Top-level trial-config key carrying the trial's place in the study; never part of TrialConfig."""

STAGE1_CELL = "stage1"
"""Cell id of the plan's prerequisite stage-1 trials."""



# --------------------------------------------------------------------------- config paths

def get_path(config: dict, path: str, default: Any = None) -> Any:
    """``config[a][b][c]`` for ``path='a.b.c'``, or ``default`` when any part is missing.

    ``*`` (a searched value set on every list element) reads the first element.
    """
    node: Any = config
    for key in path.replace("*", "0").split("."):
        try:
            node = node[int(key)] if isinstance(node, list) else node[key]
        except (KeyError, IndexError, ValueError, TypeError):
            return default
    return node


def trial_meta(config: dict) -> dict:
    """The ``ltbias`` block of a Tune trial config ({} for a config the searcher did not make)."""
    meta = config.get(META_KEY) if isinstance(config, dict) else None
    return meta if isinstance(meta, dict) else {}


def strip_meta(config: dict) -> dict:
    """A copy of a Tune trial config without the ``ltbias`` key: a plain TrialConfig dict."""
    return {k: v for k, v in config.items() if k != META_KEY}


# --------------------------------------------------------------------------- search spaces

def optuna_distributions(space: dict[str, Any]) -> dict[str, BaseDistribution]:
    """The Optuna distributions of every parameter of a space (conditions ignored); subset/simplex
    of size N become N params ``path.i``. Sampling itself is define-by-run (``platform.space.sample``)."""
    out: dict[str, BaseDistribution] = {}
    for path, spec in space.items():
        kind, arg = kind_of(spec)
        if kind == "int":
            out[path] = IntDistribution(int(arg[0]), int(arg[1]))
        elif kind in ("float", "logfloat"):
            out[path] = FloatDistribution(float(arg[0]), float(arg[1]), log=kind == "logfloat")
        elif kind == "categorical":
            out[path] = CategoricalDistribution(list(arg))
        elif kind == "subset":
            for i in range(int(arg)):
                out[f"{path}.{i}"] = CategoricalDistribution([False, True])
        else:  # simplex
            for i in range(int(arg)):
                out[f"{path}.{i}"] = FloatDistribution(0.0, 1.0)
    return out


def space_values(space: dict[str, Any], params: dict[str, Any], number: int) -> dict[str, Any]:
    """Turn Optuna params into config values by space path (subset -> index list, simplex -> weights);
    a parameter the trial did not have (its condition was false) is left out.

    An empty subset is repaired to the single index ``number % N`` (deterministic, so that a
    trial's config is reproducible from its number), because no consumer accepts an empty set.
    """
    values: dict[str, Any] = {}
    for path, spec in space.items():
        kind, arg = kind_of(spec)
        if kind == "subset":
            if f"{path}.0" not in params:
                continue
            chosen = [i for i in range(int(arg)) if params[f"{path}.{i}"]]
            values[path] = chosen or [number % int(arg)]
        elif kind == "simplex":
            if f"{path}.0" not in params:
                continue
            raw = [float(params[f"{path}.{i}"]) for i in range(int(arg))]
            total = sum(raw)
            values[path] = [r / total for r in raw] if total > 0 else [1.0 / len(raw)] * len(raw)
        elif path in params:
            values[path] = params[path]
    return values


def _stable_seed(*parts: Any) -> int:
    """A process-independent seed (Python's ``hash`` is salted per process)."""
    return zlib.crc32("/".join(str(p) for p in parts).encode()) & 0x7FFFFFFF


# --------------------------------------------------------------------------- plan access

def _field(obj: Any, name: str, default: Any = None) -> Any:
    """Attribute or key ``name`` of a plan object (dataclass, pydantic model or dict)."""
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def study_name(plan: Any) -> str:
    """The study's name (Tune experiment name, MLflow experiment name, Optuna study prefix)."""
    return str(_field(plan.study, "name"))


def cell_replicates(cell: Any) -> list[dict]:
    """The replicates (Replicate dicts) a cell runs (its base config's when the cell lists none)."""
    reps = list(_field(cell, "replicates", None) or [])
    return reps or list(_field(cell, "base_config", {}).get("replicates") or [{}])


def with_replicate(config: dict, rep: dict) -> dict:
    """A trial config (without the ``ltbias`` block) as replicate ``rep`` runs it
    (``trainables.config.apply_replicate``: world seed, pre-training seeds, fine-tuning seed)."""
    from trainables.config import Replicate, TrialConfig, apply_replicate

    cfg = apply_replicate(TrialConfig.model_validate(config), Replicate.model_validate(rep))
    return cfg.model_dump(mode="json")


def replicate_label(rep: dict | None) -> str | None:
    """'w0-p1-f0' (the ``ltbias.replicate`` tag), None for a trial over all replicates."""
    if rep is None:
        return None
    from trainables.config import Replicate
    return Replicate.model_validate(rep).label()


def cell_group_size(cell: Any) -> int:
    """Tune trials per configuration: one per replicate for ``train`` cells, else one."""
    return len(cell_replicates(cell)) if _field(cell, "kind", "train") == "train" else 1


def cell_num_configs(cell: Any) -> int:
    """Configurations a cell evaluates: its Optuna/random/grid samples, or 1 without a space."""
    space = _field(cell, "space", None) or {}
    if not space:
        return 1
    if _field(cell, "algorithm", "optuna") == "grid":
        return math.prod(len(v) for v in grid_values(space).values())
    return int(_field(cell, "num_samples", 1) or 1)


def cell_num_trials(cell: Any) -> int:
    """Tune trials a cell runs."""
    return cell_num_configs(cell) * cell_group_size(cell)


def plan_num_trials(plan: Any) -> int:
    """Tune trials the searcher emits for a plan (prerequisites + every cell)."""
    return len(_field(plan, "prerequisites", None) or []) + sum(
        cell_num_trials(c) for c in plan.cells)


# --------------------------------------------------------------------------- the searcher

@dataclass
class _Group:
    """One configuration of a cell: an Optuna trial (or the cell's single config) over its seeds."""

    optuna_trial: int | None
    members: dict[str, float | None] = field(default_factory=dict)  # Tune trial id -> final value
    size: int = 1
    told: bool = False


@dataclass
class _CellState:
    """Searcher bookkeeping of one cell."""

    emitted_configs: int = 0
    queue: list[dict] = field(default_factory=list)  # configs of the current group not yet emitted
    groups: dict[int, _Group] = field(default_factory=dict)  # group index -> group


class CellSearcher(Searcher):
    """Emit a plan's prerequisite and cell trials, keeping one Optuna study per searched cell."""

    def __init__(self, plan: Any, *, sampler_seed: int | None = None):
        super().__init__(metric=plan.metric, mode=plan.mode)
        self._plan = plan
        self._study = study_name(plan)
        self._storage = plan.optuna_storage
        self._sampler_seed = sampler_seed
        self._prereqs: list[dict] = [dict(p) for p in (_field(plan, "prerequisites", None) or [])]
        self._cells = {c.id: c for c in plan.cells}
        if STAGE1_CELL in self._cells:
            raise ValueError(f"cell id {STAGE1_CELL!r} is reserved for stage-1 prerequisites")
        self._state = {cid: _CellState() for cid in self._cells}
        self._prereq_emitted = 0
        self._prereq_done: set[str] = set()
        self._trials: dict[str, tuple[str, int]] = {}  # Tune trial id -> (cell id, group index)
        self._completed: set[str] = set()
        self._optuna: dict[str, optuna.Study] = {}  # opened lazily; never pickled
        self._rdb: optuna.storages.RDBStorage | None = None  # one engine for every call; never pickled

    # ------------------------------------------------------------------ Tune hooks

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict,
                              **spec: Any) -> bool:
        """Accept Tune's metric/mode when they agree with the plan's (the plan is the truth)."""
        return (metric in (None, self._metric)) and (mode in (None, self._mode)) and not config

    @property
    def total_trials(self) -> int:
        """Tune trials this searcher emits in all."""
        return plan_num_trials(self._plan)

    def suggest(self, trial_id: str) -> dict | str | None:
        """The next trial config, None while post-hoc cells wait for stage 1, FINISHED at the end."""
        if self._prereq_emitted < len(self._prereqs):
            index = self._prereq_emitted
            self._prereq_emitted += 1
            self._trials[trial_id] = (STAGE1_CELL, index)
            config = copy.deepcopy(self._prereqs[index])
            config[META_KEY] = {"cell": STAGE1_CELL, "stage": 1, "optuna_trial": None,
                                "seed": config.get("seed"), "group": index}
            return config
        waiting = False
        for cid, cell in self._cells.items():
            if self._exhausted(cid):
                continue
            if _field(cell, "kind", "train") != "train" and not self._stage1_finished():
                waiting = True
                continue
            return self._next_of_cell(cid, trial_id)
        return None if waiting else Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        """Record a finished Tune trial; tell Optuna when its whole seed group has finished."""
        if trial_id not in self._trials or trial_id in self._completed:
            return  # a trial resumed after Optuna was told (resume_errored) changes nothing here
        self._completed.add(trial_id)
        cid, gindex = self._trials[trial_id]
        if cid == STAGE1_CELL:
            self._prereq_done.add(trial_id)
            return
        value = None if error else _finite(result, self._metric)
        group = self._state[cid].groups[gindex]
        group.members[trial_id] = value
        if len(group.members) == group.size and not group.told:
            self._tell(cid, group)

    # ------------------------------------------------------------------ persistence

    def get_state(self) -> dict:
        """Bookkeeping only; Optuna's trials live in its RDB storage."""
        return {k: v for k, v in self.__dict__.items() if k not in ("_optuna", "_plan", "_rdb")}

    def set_state(self, state: dict) -> None:
        """Restore bookkeeping saved by ``get_state`` (the plan and Optuna handles are kept)."""
        self.__dict__.update(state)
        self._optuna = {}
        self._fail_orphans()

    def rdb(self) -> "optuna.storages.RDBStorage":
        """The Optuna RDB storage, opened once (a new engine per call costs about 0.3 s)."""
        if self._rdb is None:
            self._rdb = optuna.storages.RDBStorage(self._storage)
        return self._rdb

    def save(self, checkpoint_path: str) -> None:
        """Pickle the bookkeeping to ``checkpoint_path``."""
        with open(checkpoint_path, "wb") as fh:
            pickle.dump(self.get_state(), fh)

    def restore(self, checkpoint_path: str) -> None:
        """Load bookkeeping written by ``save``."""
        with open(checkpoint_path, "rb") as fh:
            self.set_state(pickle.load(fh))

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_optuna"] = {}  # SQLAlchemy engines do not pickle; reopened from the RDB on use
        state["_rdb"] = None
        return state

    def reset_studies(self) -> None:
        """Delete this plan's Optuna studies left in the RDB by an earlier, discarded execution.

        A fresh execution (not ``--resume``) starts with an empty Tune experiment; Optuna trials
        of a run whose Tune state is gone would otherwise bias the sampler and never be told.
        """
        names = {f"{self._study}/{cid}" for cid, c in self._cells.items() if _field(c, "space")}
        try:
            existing = {s.study_name for s in optuna.get_all_study_summaries(storage=self.rdb())}
        except Exception:  # noqa: BLE001 - a fresh DB has no tables yet: nothing to delete
            return
        for name in sorted(names & existing):
            optuna.delete_study(study_name=name, storage=self.rdb())
        self._optuna = {}

    # ------------------------------------------------------------------ queries

    def trial_place(self, trial_id: str) -> tuple[str, int] | None:
        """(cell id, group index) of a Tune trial this searcher emitted."""
        return self._trials.get(trial_id)

    def optuna_study(self, cell_id: str) -> optuna.Study:
        """The cell's Optuna study, created in the RDB on first use."""
        if cell_id not in self._optuna:
            cell = self._cells[cell_id]
            space = _field(cell, "space", None) or {}
            algorithm = _field(cell, "algorithm", "optuna")
            name = f"{self._study}/{cell_id}"
            # A resumed study continues the sampler's random stream from where the RDB stands,
            # so startup trials after a restart do not repeat the first run's proposals.
            done = _count_trials(self.rdb(), name)
            seed = _stable_seed(self._sampler_seed if self._sampler_seed is not None else "",
                                name, done)
            if algorithm == "grid":
                sampler: optuna.samplers.BaseSampler = optuna.samplers.GridSampler(
                    grid_values(space), seed=seed)
            elif algorithm == "random":
                sampler = optuna.samplers.RandomSampler(seed=seed)
            elif algorithm == "optuna":
                sampler = optuna.samplers.TPESampler(seed=seed)
            else:
                raise ValueError(f"cell {cell_id}: algorithm {algorithm!r} is not one of "
                                 "grid, random, optuna")
            optuna.logging.set_verbosity(optuna.logging.WARNING)  # else INFO lines per study
            self._optuna[cell_id] = optuna.create_study(
                study_name=name, storage=self.rdb(), load_if_exists=True, sampler=sampler,
                direction="maximize" if self._mode == "max" else "minimize")
        return self._optuna[cell_id]

    # ------------------------------------------------------------------ internals

    def _stage1_finished(self) -> bool:
        return (self._prereq_emitted == len(self._prereqs)
                and len(self._prereq_done) == len(self._prereqs))

    def _exhausted(self, cid: str) -> bool:
        st = self._state[cid]
        return not st.queue and st.emitted_configs >= cell_num_configs(self._cells[cid])

    def _next_of_cell(self, cid: str, trial_id: str) -> dict:
        st = self._state[cid]
        if not st.queue:
            st.queue = self._new_group(cid)
        config = st.queue.pop(0)
        gindex = st.emitted_configs - 1
        self._trials[trial_id] = (cid, gindex)
        return config

    def _new_group(self, cid: str) -> list[dict]:
        """Ask Optuna (when the cell searches) and expand the proposal over the cell's seeds."""
        st, cell = self._state[cid], self._cells[cid]
        space = _field(cell, "space", None) or {}
        base = copy.deepcopy(dict(cell.base_config))
        number = None
        if space:
            trial = self.optuna_study(cid).ask()  # define-by-run: inactive parameters never sampled
            number = trial.number
            cfg = base
            base = apply_params(base, sample(space, trial, lambda path: get_path(cfg, path)))
        gindex = st.emitted_configs
        st.emitted_configs += 1
        size = cell_group_size(cell)
        st.groups[gindex] = _Group(optuna_trial=number, size=size)
        reps: list[dict | None] = list(cell_replicates(cell)) if size > 1 or _field(
            cell, "kind", "train") == "train" else [None]
        configs = []
        for rep in reps:
            config = with_replicate(base, rep) if rep is not None else copy.deepcopy(base)
            config[META_KEY] = {"cell": cid, "stage": 1 if _field(cell, "kind") == "train" else 2,
                                "optuna_trial": number, "seed": None if rep is None else config["seed"],
                                "replicate": replicate_label(rep), "group": gindex}
            configs.append(config)
        return configs

    def _tell(self, cid: str, group: _Group) -> None:
        group.told = True
        if group.optuna_trial is None:
            return
        values = [v for v in group.members.values() if v is not None]
        study = self.optuna_study(cid)
        if values:
            study.tell(group.optuna_trial, statistics.fmean(values), skip_if_finished=True)
        else:
            study.tell(group.optuna_trial, state=TrialState.FAIL, skip_if_finished=True)

    def _fail_orphans(self) -> None:
        """Mark FAIL the Optuna trials asked after the last searcher checkpoint (never emitted)."""
        for cid, st in self._state.items():
            if not _field(self._cells[cid], "space", None):
                continue
            known = {g.optuna_trial for g in st.groups.values()}
            study = self.optuna_study(cid)
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if t.number not in known:
                    study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
                    # never evaluated: propose it again (a grid sampler counts FAIL as visited)
                    study.enqueue_trial(t.params, skip_if_exists=False)


def finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _finite(result: dict | None, metric: str) -> float | None:
    return finite((result or {}).get(metric))


def _count_trials(storage: "str | optuna.storages.BaseStorage", name: str) -> int:
    try:
        summaries = optuna.get_all_study_summaries(storage=storage)
    except Exception:  # noqa: BLE001 - a fresh DB has no tables yet; Optuna creates them later
        return 0
    return next((s.n_trials for s in summaries if s.study_name == name), 0)


def iter_groups(records: Iterable[dict]) -> dict[tuple[str, int], list[dict]]:
    """Group trial records (dicts with ``config``) by (cell id, group index) from their ``ltbias`` block."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for rec in records:
        meta = trial_meta(rec["config"])
        if not meta:
            continue
        groups.setdefault((meta["cell"], int(meta.get("group") or 0)), []).append(rec)
    return groups


__all__ = ["CellSearcher", "META_KEY", "STAGE1_CELL", "cell_num_trials", "cell_replicates",
           "get_path", "grid_values", "iter_groups", "optuna_distributions", "plan_num_trials",
           "space_values", "strip_meta", "study_name", "trial_meta"]
