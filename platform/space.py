"""Search spaces: the distributions a study's ``search.space`` may hold, and define-by-run sampling.

A space maps trial paths to distributions, each a one-key mapping plus an optional condition:

    finetune.lr:         {logfloat: [0.001, 0.1]}
    backdoor.weighting:  {categorical: [uniform, searched, fitted]}
    backdoor.weights:    {simplex: 3, when: {backdoor.weighting: [searched]}}

``when: {path: [values]}`` makes the parameter exist only when ``path`` (a parameter sampled
earlier in the space, or else a value of the cell's trial config) takes one of the values. The
searcher samples define-by-run (``sample``: Optuna ``ask()``, then ``trial.suggest_*`` in space
order, skipping inactive parameters), so TPE spends no samples on unused dimensions and
parameter importances never rank a parameter a trial did not have.

The pydantic models (``IntRange`` ... ``Simplex``) are the single definition: the study file's
JSON schema is generated from them; ``check_distribution`` validates through them (with messages
that say what is expected) and returns the plain dict the plan and the searcher carry.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from platform.errors import did_you_mean, show_value

Condition = dict[str, list[Any]]


class _Dist(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    when: Condition | None = Field(None, description="trial path -> values: the parameter exists only "
                                                     "when that path takes one of them")


class IntRange(_Dist):
    """``{int: [lo, hi]}``: integers lo..hi, both included."""

    bounds: tuple[int, int] = Field(alias="int")


class FloatRange(_Dist):
    """``{float: [lo, hi]}``: uniform on [lo, hi]."""

    bounds: tuple[float, float] = Field(alias="float")


class LogFloatRange(_Dist):
    """``{logfloat: [lo, hi]}``: log-uniform on [lo, hi], 0 < lo."""

    bounds: tuple[float, float] = Field(alias="logfloat")


class Categorical(_Dist):
    """``{categorical: [choices]}``: one of the distinct choices."""

    choices: list[Any] = Field(alias="categorical", min_length=1)


class Subset(_Dist):
    """``{subset: N}``: a non-empty subset of range(N), as a sorted list (backdoor.strata)."""

    size: int = Field(alias="subset", ge=1)


class Simplex(_Dist):
    """``{simplex: N}``: N non-negative weights summing to 1 (backdoor.weights)."""

    size: int = Field(alias="simplex", ge=1)


MODELS: dict[str, type[_Dist]] = {"int": IntRange, "float": FloatRange, "logfloat": LogFloatRange,
                                  "categorical": Categorical, "subset": Subset, "simplex": Simplex}
DISTRIBUTIONS = {
    "int": "[lo, hi] integers, lo < hi (both included)",
    "float": "[lo, hi] numbers, lo < hi (uniform)",
    "logfloat": "[lo, hi] numbers, 0 < lo < hi (log-uniform)",
    "categorical": "a non-empty list of distinct choices",
    "subset": "N >= 1: a non-empty subset of range(N), as a sorted list (backdoor.strata)",
    "simplex": "N >= 1: N non-negative weights summing to 1 (backdoor.weights)",
}
DIST_HELP = ("a one-key mapping: " + "; ".join(f"{{{k}: {v.split(':')[0]}}}" if k in ("subset", "simplex")
                                               else f"{{{k}: {v}}}" for k, v in DISTRIBUTIONS.items())
             + "; optionally with when: {path: [values]}")
JSON_SCHEMA = {"oneOf": [m.model_json_schema(by_alias=True) for m in MODELS.values()], "description": DIST_HELP}
"""The JSON schema of one distribution, generated from the models (inlined: they have no $refs)."""


def kind_of(dist: dict[str, Any]) -> tuple[str, Any]:
    """(kind, argument) of a distribution dict, ignoring its condition."""
    keys = [k for k in dist if k != "when"]
    if len(keys) != 1 or keys[0] not in MODELS:
        raise ValueError(f"a distribution is {DIST_HELP}")
    return keys[0], dist[keys[0]]


def condition(dist: dict[str, Any]) -> Condition:
    """The distribution's ``when`` ({} = always active)."""
    return dict(dist.get("when") or {})


def check_distribution(value: Any) -> dict[str, Any]:
    """Validate a distribution such as ``{logfloat: [0.001, 0.1]}``; return it normalised."""
    if not isinstance(value, dict) or len([k for k in value if k != "when"]) != 1:
        raise ValueError(f"a distribution is {DIST_HELP}")
    kind = next(k for k in value if k != "when")
    arg = value[kind]
    if kind not in MODELS:
        raise ValueError(f"unknown distribution {kind!r}{did_you_mean(kind, list(DISTRIBUTIONS))} "
                         f"(known: {', '.join(DISTRIBUTIONS)})")
    expected = f"{{{kind}: {DISTRIBUTIONS[kind]}}}"
    when = value.get("when")
    if when is not None and (not isinstance(when, dict) or not when
                             or not all(isinstance(v, list) and v for v in when.values())):
        raise ValueError(f"when = {show_value(when)}: expected a mapping of trial paths to non-empty "
                         "value lists, e.g. when: {backdoor.weighting: [searched]}")
    if kind in ("int", "float", "logfloat"):
        number = int if kind == "int" else (int, float)
        if (not isinstance(arg, (list, tuple)) or len(arg) != 2
                or not all(isinstance(x, number) and not isinstance(x, bool) for x in arg)):
            raise ValueError(f"expected {expected}")
        lo, hi = arg
        if not all(math.isfinite(x) for x in arg):
            raise ValueError(f"bounds must be finite: expected {expected}")
        if not lo < hi:
            raise ValueError(f"lo ({lo}) must be < hi ({hi}): expected {expected}")
        if kind == "logfloat" and lo <= 0:
            raise ValueError(f"lo ({lo}) must be > 0 on a log scale: expected {expected}")
    elif kind == "categorical":
        if not isinstance(arg, (list, tuple)) or not arg:
            raise ValueError(f"no choices: expected {expected}")
        keys = [json.dumps(x, sort_keys=True, default=str) for x in arg]
        for i, key in enumerate(keys):
            if key in keys[:i]:
                raise ValueError(f"choice {show_value(arg[i])} is given twice: expected {expected}")
    elif not isinstance(arg, int) or isinstance(arg, bool) or arg < 1:
        raise ValueError(f"expected {expected}")
    try:
        model = MODELS[kind].model_validate(value)
    except ValidationError as e:  # the checks above should have caught it; say what pydantic says
        raise ValueError(f"expected {expected}: {e.errors(include_url=False)[0]['msg']}") from None
    out = model.model_dump(by_alias=True, exclude_none=True, mode="json")
    if kind == "int":
        out[kind] = [int(x) for x in out[kind]]
    elif kind in ("float", "logfloat"):
        out[kind] = [float(x) for x in out[kind]]
    elif kind == "categorical":
        out[kind] = list(arg)  # keep the given values (pydantic's JSON mode would stringify some)
    return out


def representative_values(dist: dict[str, Any]) -> list[Any]:
    """Values a distribution can produce that together probe its extremes (for validation)."""
    kind, arg = kind_of(dist)
    if kind in ("int", "float", "logfloat", "categorical"):
        return list(arg)
    if kind == "subset":
        return [list(range(arg)), [arg - 1]]
    return [[1.0 / arg] * arg]  # simplex


# ------------------------------------------------------------------------------ sampling

def _suggest(trial: Any, path: str, kind: str, arg: Any) -> Any:
    """One parameter through Optuna's define-by-run API; subset/simplex use params ``path.i``."""
    if kind == "int":
        return trial.suggest_int(path, int(arg[0]), int(arg[1]))
    if kind in ("float", "logfloat"):
        return trial.suggest_float(path, float(arg[0]), float(arg[1]), log=kind == "logfloat")
    if kind == "categorical":
        return trial.suggest_categorical(path, list(arg))
    if kind == "subset":
        return [trial.suggest_categorical(f"{path}.{i}", [False, True]) for i in range(int(arg))]
    return [trial.suggest_float(f"{path}.{i}", 0.0, 1.0) for i in range(int(arg))]


def _to_value(kind: str, arg: Any, raw: Any, number: int) -> Any:
    """Config value of a sampled parameter: subset -> index list (never empty), simplex -> weights."""
    if kind == "subset":
        chosen = [i for i, on in enumerate(raw) if on]
        return chosen or [number % int(arg)]
    if kind == "simplex":
        total = sum(raw)
        return [r / total for r in raw] if total > 0 else [1.0 / len(raw)] * len(raw)
    return raw


def is_active(dist: dict[str, Any], values: dict[str, Any], lookup: Callable[[str], Any]) -> bool:
    """Whether ``dist``'s condition holds: each ``when`` path (a value sampled earlier, else
    ``lookup(path)`` from the trial config) is one of its listed values."""
    for path, allowed in condition(dist).items():
        value = values[path] if path in values else lookup(path)
        if value not in allowed:
            return False
    return True


def sample(space: dict[str, Any], trial: Any, lookup: Callable[[str], Any] = lambda p: None) -> dict[str, Any]:
    """Define-by-run: config values by path for an Optuna trial, in space order, inactive skipped."""
    values: dict[str, Any] = {}
    for path, dist in space.items():
        if not is_active(dist, values, lookup):
            continue
        kind, arg = kind_of(dist)
        values[path] = _to_value(kind, arg, _suggest(trial, path, kind, arg), trial.number)
    return values


def grid_values(space: dict[str, Any]) -> dict[str, list]:
    """The value lists of an exhaustive grid over a space of int and categorical entries."""
    out: dict[str, list] = {}
    for path, dist in space.items():
        kind, arg = kind_of(dist)
        if condition(dist):
            raise ValueError(f"search.space.{path}: algorithm 'grid' enumerates every combination, so a "
                             "conditional parameter (when) would be tried in vain; use algorithm "
                             "'optuna' or 'random', or sweep the condition as a grid axis")
        if kind == "int":
            out[path] = list(range(int(arg[0]), int(arg[1]) + 1))
        elif kind == "categorical":
            out[path] = list(arg)
        else:
            raise ValueError(f"search.space.{path}: algorithm 'grid' enumerates only int and "
                             f"categorical entries, not {kind!r}; use algorithm 'optuna' or 'random'")
    return out


def grid_size(space: dict[str, Any]) -> int:
    """Configurations an exhaustive grid over ``space`` tries."""
    return math.prod(len(v) for v in grid_values(space).values())


__all__ = ["Categorical", "DISTRIBUTIONS", "DIST_HELP", "FloatRange", "IntRange", "JSON_SCHEMA",
           "LogFloatRange", "MODELS", "Simplex", "Subset", "check_distribution", "condition",
           "grid_size", "grid_values", "is_active", "kind_of", "representative_values", "sample"]
