"""The one place where spread and uncertainty are computed; every report of a metric calls it.

Definitions (used by the trainable, the CLI table, the HTML report and the Parquet export alike):

- A *replicate* is one independent repeat of a measurement: one (world seed, pre-training seed,
  fine-tuning seed) combination of a study. Values are per replicate, never per image.
- ``summarize``: mean and **sample** standard deviation (ddof = 1) over replicates; the s.d. is NaN
  with fewer than two replicates (one value has no spread).
- ``paired_interval``: the mean of per-replicate differences ``a_r - b_r`` (the same replicate's world,
  pre-training and fine-tuning on both sides) with a two-sided Student-t interval over replicates,
  ``mean +- t_{n-1, (1+level)/2} * sd / sqrt(n)``. With fewer than ``MIN_REPLICATES_FOR_T``
  replicates a t-interval is too wide to say anything, so when the per-image correctness of both
  sides is given, the interval is a paired bootstrap over test images instead (each resample draws
  the same images for both sides, per replicate; ``BOOTSTRAP_RESAMPLES`` resamples, fixed seed).
  ``Interval.method`` says which one was used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

LEVEL = 0.95
MIN_REPLICATES_FOR_T = 3
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
STD_SUFFIX = "_std"


@dataclass(frozen=True)
class Summary:
    """Mean and sample s.d. (ddof = 1; NaN when n < 2) over ``n`` replicates."""

    mean: float
    sd: float
    n: int


@dataclass(frozen=True)
class Interval:
    """A paired difference: its mean over replicates and a ``level`` interval made by ``method``."""

    mean: float
    lo: float
    hi: float
    n: int
    method: str  # "t" (over replicates), "bootstrap" (over test images), or "none" (n < 2, no images)
    level: float = LEVEL


def _finite(values: Sequence[float]) -> np.ndarray:
    arr = np.asarray([float(v) for v in values], dtype=np.float64)
    return arr[np.isfinite(arr)]


def summarize(values: Sequence[float]) -> Summary:
    """Mean and sample s.d. of the finite ``values`` (NaN mean when there are none)."""
    arr = _finite(values)
    if len(arr) == 0:
        return Summary(math.nan, math.nan, 0)
    sd = float(np.std(arr, ddof=1)) if len(arr) > 1 else math.nan
    return Summary(float(np.mean(arr)), sd, int(len(arr)))


def t_interval(diffs: Sequence[float], level: float = LEVEL) -> Interval:
    """Student-t interval of the mean of ``diffs`` (per-replicate paired differences)."""
    arr = _finite(diffs)
    n = len(arr)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, "none", level)
    mean = float(np.mean(arr))
    if n < 2:
        return Interval(mean, math.nan, math.nan, n, "none", level)
    from scipy.stats import t  # imported on use: the trainable's import path stays light

    half = float(t.ppf(0.5 + level / 2, n - 1)) * float(np.std(arr, ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, "t", level)


def bootstrap_interval(correct_a: Sequence[np.ndarray], correct_b: Sequence[np.ndarray],
                       level: float = LEVEL, resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED) -> Interval:
    """Paired bootstrap over test images of mean_r(acc_a,r - acc_b,r).

    ``correct_a[r]`` and ``correct_b[r]`` are 0/1 arrays over replicate r's test images, in the same
    order on both sides; every resample draws one set of image indices per replicate and uses it on
    both sides, so the interval reflects the pairing.
    """
    if len(correct_a) != len(correct_b) or not correct_a:
        raise ValueError(f"need the same number (>= 1) of replicates on both sides, got "
                         f"{len(correct_a)} and {len(correct_b)}")
    rng = np.random.default_rng(seed)
    diffs = []
    for a, b in zip(correct_a, correct_b):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
            raise ValueError(f"per-image correctness must be two equal, non-empty 1-d arrays; got "
                             f"{a.shape} and {b.shape}")
        diffs.append(a - b)
    point = float(np.mean([d.mean() for d in diffs]))
    stats = np.zeros(resamples)
    for d in diffs:
        idx = rng.integers(0, len(d), size=(resamples, len(d)))
        stats += d[idx].mean(axis=1)
    stats /= len(diffs)
    lo, hi = np.quantile(stats, [0.5 - level / 2, 0.5 + level / 2])
    return Interval(point, float(lo), float(hi), len(diffs), "bootstrap", level)


def paired_interval(a: Sequence[float], b: Sequence[float],
                    correct_a: Sequence[np.ndarray] | None = None,
                    correct_b: Sequence[np.ndarray] | None = None, level: float = LEVEL) -> Interval:
    """The paired difference a - b over replicates, with the interval the module docstring defines."""
    if len(a) != len(b):
        raise ValueError(f"paired values need the same replicates: {len(a)} vs {len(b)}")
    diffs = [x - y for x, y in zip(a, b)]
    if len(_finite(diffs)) < MIN_REPLICATES_FOR_T and correct_a is not None and correct_b is not None:
        return bootstrap_interval(correct_a, correct_b, level)
    return t_interval(diffs, level)


def summarize_metrics(per_replicate: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Every metric's mean over replicates, plus ``<name>_std`` (sample s.d.) when n > 1.

    Keys missing in some replicates are summarised over the replicates that have them.
    """
    out: dict[str, float] = {}
    keys = list(dict.fromkeys(k for m in per_replicate for k in m))
    for key in keys:
        s = summarize([m[key] for m in per_replicate if key in m])
        out[key] = s.mean
        if len(per_replicate) > 1:
            out[key + STD_SUFFIX] = s.sd
    return out


__all__ = ["BOOTSTRAP_RESAMPLES", "Interval", "LEVEL", "MIN_REPLICATES_FOR_T", "STD_SUFFIX",
           "Summary", "bootstrap_interval", "paired_interval", "summarize", "summarize_metrics",
           "t_interval"]
