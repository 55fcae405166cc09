"""trainables.stats: the one definition of mean, sample s.d. and paired intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from trainables.stats import (bootstrap_interval, paired_interval, summarize, summarize_metrics,
                              t_interval)


def test_summary_uses_sample_sd() -> None:
    s = summarize([0.5, 0.7, 0.9])
    assert s.mean == pytest.approx(0.7)
    assert s.sd == pytest.approx(np.std([0.5, 0.7, 0.9], ddof=1))
    assert s.n == 3
    one = summarize([0.4])
    assert one.mean == 0.4 and math.isnan(one.sd)


def test_t_interval_matches_scipy_paired_t_test() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.8, 0.02, 6), rng.normal(0.78, 0.02, 6)
    ours = paired_interval(list(a), list(b))
    ref = sps.ttest_rel(a, b).confidence_interval(0.95)
    assert ours.method == "t" and ours.n == 6
    assert ours.mean == pytest.approx(float(np.mean(a - b)))
    assert (ours.lo, ours.hi) == pytest.approx((ref.low, ref.high))


def test_few_replicates_with_images_use_a_paired_bootstrap() -> None:
    rng = np.random.default_rng(1)
    ca = [rng.random(2000) < 0.80, rng.random(2000) < 0.80]
    cb = [c & (rng.random(2000) < 0.95) for c in ca]  # b is a strictly worse copy of a
    iv = paired_interval([c.mean() for c in ca], [c.mean() for c in cb], ca, cb)
    assert iv.method == "bootstrap"
    assert 0 < iv.lo < iv.mean < iv.hi
    # the normal approximation of the same paired difference
    d = np.concatenate([a.astype(float) - b for a, b in zip(ca, cb)])
    half = 1.96 * d.std(ddof=1) / math.sqrt(len(d))
    assert iv.hi - iv.lo == pytest.approx(2 * half, rel=0.15)


def test_bootstrap_needs_matching_sides() -> None:
    with pytest.raises(ValueError, match="same number"):
        bootstrap_interval([np.ones(3)], [])


def test_one_replicate_without_images_has_no_interval() -> None:
    iv = t_interval([0.02])
    assert iv.method == "none" and math.isnan(iv.lo)


def test_summarize_metrics_reports_sample_sd_per_key() -> None:
    out = summarize_metrics([{"val/acc": 0.5, "test/acc": 0.4}, {"val/acc": 0.7, "test/acc": 0.6}])
    assert out["val/acc"] == pytest.approx(0.6)
    assert out["val/acc_std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert summarize_metrics([{"a": 1.0}]) == {"a": 1.0}
