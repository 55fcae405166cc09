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


def test_the_trainable_the_cli_rows_and_the_report_agree_on_mean_and_sd():
    """One definition of mean and sample s.d.: the stage-2 trainable (over replicates), the CLI's
    select_rows (over a train cell's replicate trials) and the report's Selection.stat agree."""
    from types import SimpleNamespace

    import pandas as pd

    from dashboards.summary import Selection
    from platform.execute import select_rows
    from trainables.methods.backdoor import mean_and_std

    values = [0.61, 0.70, 0.64, 0.58]
    per_rep = [{"val/acc": v - 0.1, "test/acc": v} for v in values]
    trainable = mean_and_std(per_rep)
    cell = SimpleNamespace(id="c00", label="x", kind="train", values={}, space={}, replicates=[{}] * 4)
    plan = SimpleNamespace(metric="val/acc", mode="max", cells=[cell])
    records = [{"trial_id": f"t{i}", "status": "TERMINATED", "result": m,
                "config": {"ltbias": {"cell": "c00", "group": 0}}} for i, m in enumerate(per_rep)]
    row = select_rows(plan, records)[0]
    stat = Selection(key=(), runs=pd.DataFrame(per_rep)).stat("test/acc", scale=1.0)
    expected = summarize(values)
    for mean, sd in ((trainable["test/acc"], trainable["test/acc_std"]), (row["test/acc"], row["test/acc_std"]),
                     (stat.mean, stat.std)):
        assert mean == pytest.approx(expected.mean) and sd == pytest.approx(expected.sd)
    assert expected.sd == pytest.approx(float(np.std(values, ddof=1)))  # the sample s.d.
