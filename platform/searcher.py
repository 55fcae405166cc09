"""The study's Tune searcher: stage-1 prerequisites first, then every cell, one Optuna study per cell.

``CellSearcher`` emits every trial of a ``Plan`` to one ``ray.tune.Tuner``:

1. the plan's prerequisite stage-1 trials (cell id ``stage1``), which fill the stage-1 cache that
   post-hoc and ensemble cells read;
2. each cell's trials. A cell with a search space gets its own Optuna study
   (``<study>/<execution>/<cell id>``) in the plan's Optuna storage (a journal file); ``study.ask()``
   then define-by-run sampling (``platform.space.sample``, conditional parameters skipped) proposes
   parameters that are
   written into the cell's base trial config by dotted path. A ``train`` cell runs each Optuna
   trial once per replicate (a *seed group*; ``trainables.config.apply_replicate`` sets its world,
   pre-training and fine-tuning seeds); Optuna is told the mean of the group's final metric once
   the whole group has finished. Members that errored or never reported the metric are left out of
   the mean; a group with no usable member is told FAIL. Post-hoc and ensemble cells run one Tune
   trial per Optuna trial (the trainable evaluates all seeds itself). They are emitted as soon
   as every prerequisite has been emitted, without waiting for the prerequisites to finish: a
   stage-2 trial that needs a stage-1 entry still being trained waits on that entry's cache lock
   (or trains a missing one itself; the prerequisite trial then replays it). Returning None from
   ``suggest`` while prerequisites run would let Tune drop to one worker for the rest of the
   study, because short stage-2 trials finish before a new worker process has started.

The trial configs Tune carries are compact (``trainables.contract.compact_config``): one top-level
key, ``ltbias``, holding the envelope (cell, stage, optuna_trial, seed), the content key of the
trial's shared base config and the trial's own values (searched values, replicate seeds). Their
size does not grow with the base config (pool, backdoor sections, grid), so neither does Tune's
experiment state per trial. ``plan_bases`` gives the base configs; the trainable, tracking and the
records resolve a trial's full ``TrialConfig`` dict (plus envelope) with
``trainables.contract.resolve_config``. The searcher's bookkeeping is pickled by ``save``; Optuna's state lives in its storage, so
``Tuner.restore`` continues where the study stopped without rerunning a finished trial.

Crash safety: the Optuna studies of one execution are named ``<study>/<execution>/<cell id>``
(``optuna_study_name``), so no other execution ever reopens or deletes them. The sampler (with its
random state) is saved in the study's storage after every ask, so a resumed study proposes exactly
what an uninterrupted one would; an Optuna trial asked after the last searcher checkpoint (never
run) is handed out again, not failed and re-asked. Optuna writes are retried while the storage is
locked, and a seed group counts as told only once the tell has been written.
"""

from __future__ import annotations

import base64
import copy
import math
import pickle
import statistics
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterable

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from platform.paths import open_optuna_storage
from platform.plan import apply_params
from platform.retry import retry
from platform.space import grid_values, sample
from trainables.contract import (META_KEY, STAGE1_CELL, Envelope, compact_config, config_key,
                                 resolve_config, strip_meta, trial_meta, with_envelope)
from trainables.selection import finite


SAMPLER_ATTR = "ltbias.sampler"
"""Study system attribute holding the pickled sampler (base64) after the latest ask."""


def optuna_study_name(study: str, cell_id: str, execution: str | None = None) -> str:
    """The Optuna study of one cell in one execution: ``<study>/<execution>/<cell id>``
    (``<study>/<cell id>`` for a searcher used without an execution, e.g. in tests)."""
    return f"{study}/{execution}/{cell_id}" if execution else f"{study}/{cell_id}"


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


# --------------------------------------------------------------------------- seeds

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


def plan_bases(plan: Any) -> dict[str, dict]:
    """The plan's shared base configs by content key (``trainables.contract.config_key``): each
    prerequisite and each cell's base config. Tune's trial configs refer to them
    (``compact_config``); the trainable and the driver resolve them with these
    (``resolve_config``). A function of the plan alone, so a restored study finds them again."""
    bases = [dict(p) for p in (_field(plan, "prerequisites", None) or [])]
    bases += [copy.deepcopy(dict(c.base_config)) for c in plan.cells]
    return {config_key(b): b for b in bases}


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

    def __init__(self, plan: Any, *, sampler_seed: int | None = None, execution: str | None = None):
        super().__init__(metric=plan.metric, mode=plan.mode)
        self._plan = plan
        self._study = study_name(plan)
        self._execution = execution
        self._orphans: dict[str, list[int]] = {}  # cell -> Optuna trials asked but never emitted
        self._storage = plan.optuna_storage
        self._sampler_seed = sampler_seed
        self._prereqs: list[dict] = [dict(p) for p in (_field(plan, "prerequisites", None) or [])]
        self._cells = {c.id: c for c in plan.cells}
        if STAGE1_CELL in self._cells:
            raise ValueError(f"cell id {STAGE1_CELL!r} is reserved for stage-1 prerequisites")
        self._state = {cid: _CellState() for cid in self._cells}
        self._prereq_emitted = 0
        self._trials: dict[str, tuple[str, int]] = {}  # Tune trial id -> (cell id, group index)
        self._completed: set[str] = set()
        self._optuna: dict[str, optuna.Study] = {}  # opened lazily; never pickled
        self._rdb: optuna.storages.BaseStorage | None = None  # opened once; never pickled

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
        """The next trial config (prerequisites first, then cells in order), FINISHED at the end.

        Never None: every allowed slot gets a trial, so Tune keeps one worker per slot busy.
        """
        if self._prereq_emitted < len(self._prereqs):
            index = self._prereq_emitted
            self._prereq_emitted += 1
            self._trials[trial_id] = (STAGE1_CELL, index)
            config = copy.deepcopy(self._prereqs[index])
            with_envelope(config, Envelope(STAGE1_CELL, 1, group=index, seed=config.get("seed")))
            return compact_config(config, self._prereqs[index])
        for cid in self._cells:
            if not self._exhausted(cid):
                return self._next_of_cell(cid, trial_id)
        return Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        """Record a finished Tune trial; tell Optuna when its whole seed group has finished."""
        if trial_id not in self._trials or trial_id in self._completed:
            return  # a trial resumed after Optuna was told (resume_errored) changes nothing here
        self._completed.add(trial_id)
        cid, gindex = self._trials[trial_id]
        if cid == STAGE1_CELL:
            return
        value = None if error else _finite(result, self._metric)
        group = self._state[cid].groups[gindex]
        group.members[trial_id] = value
        if len(group.members) == group.size and not group.told:
            self._tell(cid, group)

    # ------------------------------------------------------------------ persistence

    def get_state(self) -> dict:
        """Bookkeeping only; Optuna's trials live in its storage."""
        return {k: v for k, v in self.__dict__.items() if k not in ("_optuna", "_plan", "_rdb")}

    def set_state(self, state: dict) -> None:
        """Restore bookkeeping saved by ``get_state`` (the plan and Optuna handles are kept)."""
        self.__dict__.update(state)
        self._optuna = {}
        self.__dict__.setdefault("_execution", None)
        self._orphans = {}
        self._adopt_orphans()

    def rdb(self) -> "optuna.storages.BaseStorage":
        """The Optuna storage (journal file or RDB), opened once per process."""
        if self._rdb is None:
            self._rdb = retry(open_optuna_storage, self._storage, what=f"Optuna storage {self._storage}")
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
        state["_optuna"] = {}  # storage handles do not pickle; reopened on use
        state["_rdb"] = None
        return state

    # ------------------------------------------------------------------ queries

    def trial_place(self, trial_id: str) -> tuple[str, int] | None:
        """(cell id, group index) of a Tune trial this searcher emitted."""
        return self._trials.get(trial_id)

    def optuna_study(self, cell_id: str) -> optuna.Study:
        """The cell's Optuna study, created in the storage on first use."""
        if cell_id not in self._optuna:
            cell = self._cells[cell_id]
            space = _field(cell, "space", None) or {}
            algorithm = _field(cell, "algorithm", "optuna")
            name = self.optuna_name(cell_id)
            # Seeded by study and cell (not execution): two executions propose the same values.
            seed = _stable_seed(self._sampler_seed if self._sampler_seed is not None else "",
                                f"{self._study}/{cell_id}")
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
            study = retry(optuna.create_study, study_name=name, storage=self.rdb(),
                          load_if_exists=True, sampler=sampler,
                          direction="maximize" if self._mode == "max" else "minimize",
                          what=f"Optuna study {name}")
            saved = self.rdb().get_study_system_attrs(
                self.rdb().get_study_id_from_name(name)).get(SAMPLER_ATTR)
            if saved:  # a resumed execution continues the sampler where it stood
                study.sampler = pickle.loads(base64.b64decode(saved))  # noqa: S301 - our own RDB
            self._optuna[cell_id] = study
        return self._optuna[cell_id]

    def optuna_name(self, cell_id: str) -> str:
        """The name of cell ``cell_id``'s Optuna study in this execution."""
        return optuna_study_name(self._study, cell_id, getattr(self, "_execution", None))

    # ------------------------------------------------------------------ internals

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
        shared = copy.deepcopy(base)  # what the trial configs refer to (``plan_bases``)
        number = None
        if space:
            number, values = self._ask(cid, space, base)
            base = apply_params(base, values)
        gindex = st.emitted_configs
        st.emitted_configs += 1
        size = cell_group_size(cell)
        st.groups[gindex] = _Group(optuna_trial=number, size=size)
        reps: list[dict | None] = list(cell_replicates(cell)) if size > 1 or _field(
            cell, "kind", "train") == "train" else [None]
        configs = []
        for rep in reps:
            config = with_replicate(base, rep) if rep is not None else copy.deepcopy(base)
            with_envelope(config, Envelope(cid, 1 if _field(cell, "kind") == "train" else 2,
                                           group=gindex, optuna_trial=number,
                                           seed=None if rep is None else config["seed"],
                                           replicate=replicate_label(rep)))
            configs.append(compact_config(config, shared))
        return configs

    def _ask(self, cid: str, space: dict, base: dict) -> tuple[int, dict]:
        """(number, config values by path) of the cell's next Optuna trial: an orphan first
        (its recorded params replayed through the same define-by-run ``sample``), else a new ask
        after which the sampler's state is saved (so a resumed study continues its random stream).
        Sampling is define-by-run: a parameter whose ``when`` condition is false is never suggested."""
        study = self.optuna_study(cid)
        lookup = lambda path: get_path(base, path)  # noqa: E731 - conditions on fixed config values
        orphans = self._orphans.get(cid) or []
        if orphans:
            number = orphans.pop(0)
            trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
            try:
                return number, sample(space, optuna.trial.FixedTrial(dict(trial.params), number), lookup)
            except ValueError:  # the driver died while sampling it: its params are incomplete
                retry(study.tell, number, state=TrialState.FAIL, skip_if_finished=True,
                      what=f"Optuna study {self.optuna_name(cid)}")
                return self._ask(cid, space, base)
        name = self.optuna_name(cid)
        trial = retry(study.ask, what=f"Optuna study {name}")
        values = sample(space, trial, lookup)
        state = base64.b64encode(pickle.dumps(study.sampler)).decode("ascii")
        retry(self.rdb().set_study_system_attr, self.rdb().get_study_id_from_name(name),
              SAMPLER_ATTR, state, what=f"Optuna study {name}")
        return trial.number, values

    def _tell(self, cid: str, group: _Group) -> None:
        if group.optuna_trial is not None:
            values = [v for v in group.members.values() if v is not None]
            study = self.optuna_study(cid)
            what = f"Optuna study {self.optuna_name(cid)}"
            if values:
                retry(study.tell, group.optuna_trial, statistics.fmean(values),
                      skip_if_finished=True, what=what)
            else:
                retry(study.tell, group.optuna_trial, state=TrialState.FAIL,
                      skip_if_finished=True, what=what)
        group.told = True  # only once Optuna holds the result

    def _adopt_orphans(self) -> None:
        """Hand out again the Optuna trials asked after the last searcher checkpoint (never emitted),
        in the order they were asked, before asking new ones: the resumed study then evaluates the
        same configurations as an uninterrupted one, and Optuna holds no extra trial."""
        for cid, st in self._state.items():
            if not _field(self._cells[cid], "space", None):
                continue
            known = {g.optuna_trial for g in st.groups.values()}
            study = self.optuna_study(cid)
            self._orphans[cid] = sorted(t.number for t in study.get_trials(
                deepcopy=False, states=(TrialState.RUNNING,)) if t.number not in known)


def _finite(result: dict | None, metric: str) -> float | None:
    return finite((result or {}).get(metric))


def iter_groups(records: Iterable[dict]) -> dict[tuple[str, int], list[dict]]:
    """Group trial records (dicts with ``config``) by (cell id, group index) from their ``ltbias`` block."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for rec in records:
        meta = trial_meta(rec["config"])
        if not meta:
            continue
        groups.setdefault((meta["cell"], int(meta.get("group") or 0)), []).append(rec)
    return groups


__all__ = ["CellSearcher", "META_KEY", "plan_bases", "resolve_config", "SAMPLER_ATTR", "STAGE1_CELL", "cell_num_trials", "cell_replicates",
           "get_path", "grid_values", "iter_groups", "optuna_study_name", "plan_num_trials",
           "strip_meta", "study_name", "trial_meta"]
