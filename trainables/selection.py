"""Selection of a cell's best configuration: the one rule the driver and the report both apply.

A cell's configurations are *groups* (the replicates of one configuration share a group, see
``trainables.contract.Envelope``). A group's score is the mean of its members' finite objective
values; members that failed or never reported the objective are left out, and a group with no
usable member cannot be selected. The best score wins (``mode`` max or min). Test metrics are never
looked at here.

**The selection key.** The driver selects from Tune's full-precision results, the report from the
values tracking logged to MLflow, which are rounded (``trainables.contract.rounded``: 4 significant
digits). So that a near-tie (two groups closer than the rounding) cannot make them disagree,
:func:`select_group` rounds every member's value the same way before averaging: both callers then
compare the very same floats (``rounded`` is idempotent, and ``statistics.fmean`` is exactly
rounded, so the order of members does not matter either). A difference below the fourth
significant digit of a validation score is far below its sampling noise, so no information a
selection could honestly use is lost. :func:`group_score` (the reported value of a group, and
everything in ``trainables.stats``) stays full precision: rounding is for the logged display and
the selection key, never for the statistics.

**Ties** (equal keys) go to the group that comes first in the given order. Both callers give the
groups of a cell in the order of their envelope group number (``Envelope.group``: the order the
searcher proposed them), so the tie-break is deterministic and the same on both sides: the
configuration proposed first wins.
"""

from __future__ import annotations

import math
import statistics
from typing import Hashable, Iterable, Mapping, TypeVar

from trainables.contract import rounded

K = TypeVar("K", bound=Hashable)

#: Metric a stage-2 trial reports: how many seeds (replicates) its metrics average.
REPLICATES_METRIC = "replicates"


def finite(value: object) -> float | None:
    """``value`` as a float when it is a finite number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def group_score(values: Iterable[object]) -> float | None:
    """Mean of the finite values at full precision (None when there is none): the value a selected
    group reports, not its selection key."""
    usable = [v for x in values if (v := finite(x)) is not None]
    return statistics.fmean(usable) if usable else None


def selection_key(values: Iterable[object]) -> float | None:
    """A group's selection key: the mean of its finite values, each first rounded as tracking logs
    it (``contract.rounded``); None when there is none. Not a statistic: see the module docstring."""
    usable = [rounded(v) for x in values if (v := finite(x)) is not None]
    return statistics.fmean(usable) if usable else None


def select_group(groups: Mapping[K, Iterable[object]], mode: str = "max") -> K | None:
    """The key of the group with the best :func:`selection_key`, or None when no group has a finite
    value; among equal keys the first group in ``groups``' order wins (callers order by envelope
    group number)."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', not {mode!r}")
    sign = 1.0 if mode == "max" else -1.0
    best, best_score = None, -math.inf
    for key, values in groups.items():
        score = selection_key(values)
        if score is not None and sign * score > best_score:
            best, best_score = key, sign * score
    return best


__all__ = ["REPLICATES_METRIC", "finite", "group_score", "select_group", "selection_key"]
