"""Selection of a cell's best configuration: the one rule the driver and the report both apply.

A cell's configurations are *groups* (the replicates of one configuration share a group, see
``trainables.contract.Envelope``). A group's score is the mean of its members' finite objective
values; members that failed or never reported the objective are left out, and a group with no
usable member cannot be selected. The best score wins (``mode`` max or min); among equal scores the
group that comes first in the given order wins. Test metrics are never looked at here.
"""

from __future__ import annotations

import math
import statistics
from typing import Hashable, Iterable, Mapping, TypeVar

K = TypeVar("K", bound=Hashable)

#: Metric a stage-2 trial reports: how many seeds (replicates) its metrics average.
REPLICATES_METRIC = "replicates"


def finite(value: object) -> float | None:
    """``value`` as a float when it is a finite number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def group_score(values: Iterable[object]) -> float | None:
    """Mean of the finite values (None when there is none)."""
    usable = [v for x in values if (v := finite(x)) is not None]
    return statistics.fmean(usable) if usable else None


def select_group(groups: Mapping[K, Iterable[object]], mode: str = "max") -> K | None:
    """The key of the group with the best mean objective, or None when no group has a finite one."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', not {mode!r}")
    sign = 1.0 if mode == "max" else -1.0
    best, best_score = None, -math.inf
    for key, values in groups.items():
        score = group_score(values)
        if score is not None and sign * score > best_score:
            best, best_score = key, sign * score
    return best


__all__ = ["REPLICATES_METRIC", "finite", "group_score", "select_group"]
