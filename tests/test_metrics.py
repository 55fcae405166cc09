"""Metrics: names, definitions checked against hand-computed values, groups, NaN for empty groups."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainables.metrics import (compute_metrics, confusion_matrix, dp_grid, p_groups, per_class_accuracy,
                                prior_error)

GROUPS = ("many", "medium", "few")


def _onehot_logits(pred: list[int], C: int) -> np.ndarray:
    z = np.zeros((len(pred), C), dtype=np.float32)
    z[np.arange(len(pred)), pred] = 1.0
    return z


# 3 classes: 0 is D-many, 1 D-medium, 2 D-few. Class 0: 4 samples, 3 right; class 1: 2 samples, 1
# right; class 2: 2 samples, 0 right.
LABELS = [0, 0, 0, 0, 1, 1, 2, 2]
PREDS = [0, 0, 0, 1, 1, 0, 0, 1]
COUNTS = np.array([500, 50, 5])


def test_metric_names_are_exactly_the_architecture_list():
    m = compute_metrics(_onehot_logits(PREDS, 3), LABELS, COUNTS, q_hat=np.array([0.5, 0.3, 0.2]), split="test")
    expected = {f"test/{k}" for k in ("acc", "bal_acc", "macro_f1", "worst_class_acc")}
    expected |= {f"test/d_{g}" for g in GROUPS} | {f"test/p_{g}" for g in GROUPS}
    expected |= {f"test/dp_{d}_{p}" for d in GROUPS for p in GROUPS}
    expected |= {f"test/p_true_{g}" for g in GROUPS}
    assert set(m) == expected and all(isinstance(v, float) for v in m.values())


def test_metric_values_match_hand_computation():
    m = compute_metrics(_onehot_logits(PREDS, 3), LABELS, COUNTS, q_hat=np.array([0.2, 0.5, 0.3]))
    assert m["val/acc"] == pytest.approx(4 / 8)
    assert m["val/bal_acc"] == pytest.approx((3 / 4 + 1 / 2 + 0) / 3)
    # F1: class 0 TP=3 FP=2 FN=1 -> 6/9; class 1 TP=1 FP=2 FN=1 -> 2/5; class 2 -> 0.
    assert m["val/macro_f1"] == pytest.approx((6 / 9 + 2 / 5 + 0) / 3)
    assert m["val/worst_class_acc"] == 0.0
    assert (m["val/d_many"], m["val/d_medium"], m["val/d_few"]) == pytest.approx((0.75, 0.5, 0.0))
    # q_hat sorts classes 1 > 2 > 0: P-many = {1}, P-medium = {2}, P-few = {0}.
    assert (m["val/p_many"], m["val/p_medium"], m["val/p_few"]) == pytest.approx((0.5, 0.0, 0.75))
    assert m["val/dp_many_few"] == pytest.approx(0.75) and m["val/dp_medium_many"] == pytest.approx(0.5)
    assert m["val/dp_few_medium"] == 0.0 and math.isnan(m["val/dp_many_many"])


def test_group_accuracy_is_mean_per_class_not_per_sample():
    # D-many = classes 0 and 1: class 0 has 4 samples all right, class 1 has 1 sample wrong.
    m = compute_metrics(_onehot_logits([0, 0, 0, 0, 0], 2), [0, 0, 0, 0, 1], np.array([200, 150]))
    assert m["val/d_many"] == pytest.approx(0.5)  # per-sample would be 0.8


def test_empty_groups_and_missing_prior_give_nan():
    m = compute_metrics(_onehot_logits(PREDS, 3), LABELS, np.array([500, 500, 500]))
    assert m["val/d_many"] == pytest.approx(m["val/bal_acc"])
    assert math.isnan(m["val/d_medium"]) and math.isnan(m["val/d_few"])
    assert all(math.isnan(m[f"val/p_{g}"]) for g in GROUPS)
    assert all(math.isnan(m[f"val/dp_{d}_{p}"]) for d in GROUPS for p in GROUPS)


def test_classes_absent_from_the_split_do_not_count():
    acc = per_class_accuracy(_onehot_logits([0, 1], 3), [0, 1], 3)
    assert acc[:2].tolist() == [1.0, 1.0] and math.isnan(acc[2])
    m = compute_metrics(_onehot_logits([0, 1], 3), [0, 1], COUNTS)
    assert m["val/bal_acc"] == 1.0 and m["val/worst_class_acc"] == 1.0 and math.isnan(m["val/d_few"])


def test_torch_and_numpy_inputs_agree():
    rng = np.random.default_rng(0)
    z, y = rng.normal(size=(50, 6)).astype(np.float32), rng.integers(0, 6, 50)
    counts, q = np.array([300, 150, 60, 30, 10, 3]), rng.dirichlet(np.ones(6))
    a = compute_metrics(torch.from_numpy(z), torch.from_numpy(y), torch.from_numpy(counts), torch.from_numpy(q))
    assert a == pytest.approx(compute_metrics(z, y, counts, q), nan_ok=True)
    half = torch.from_numpy(z).to(torch.bfloat16)  # AMP logits
    assert compute_metrics(half, y, counts, q) == pytest.approx(
        compute_metrics(half.float().numpy(), y, counts, q), nan_ok=True)


def test_p_groups_are_equal_thirds_by_descending_prior():
    q = np.array([0.05, 0.3, 0.1, 0.2, 0.15, 0.2])
    assert p_groups(q).tolist() == [2, 0, 2, 0, 1, 1]  # order 1, 3, 5 (tie: lower index first), 4, 2, 0
    assert np.bincount(p_groups(np.ones(10))).tolist() == [4, 3, 3]


def test_confusion_matrix_rows_are_true_classes():
    cm = confusion_matrix(_onehot_logits(PREDS, 3), LABELS, 3)
    assert cm.tolist() == [[3, 1, 0], [1, 1, 0], [1, 1, 0]]


def test_dp_grid_matches_the_dp_metrics():
    q = np.array([0.2, 0.5, 0.3])
    grid = dp_grid(_onehot_logits(PREDS, 3), LABELS, COUNTS, q)
    m = compute_metrics(_onehot_logits(PREDS, 3), LABELS, COUNTS, q)
    for d, dn in enumerate(GROUPS):
        for p, pn in enumerate(GROUPS):
            assert grid[d, p] == pytest.approx(m[f"val/dp_{dn}_{pn}"], nan_ok=True)


def test_group_count_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="group_counts has 2 classes but logits have 3"):
        compute_metrics(_onehot_logits(PREDS, 3), LABELS, np.array([1, 2]))


def test_p_true_groups_use_the_true_prior_and_prior_error_measures_q_hat():
    logits = _onehot_logits(PREDS, 3)
    q_hat, truth = np.array([0.5, 0.3, 0.2]), np.array([0.2, 0.3, 0.5])
    m = compute_metrics(logits, LABELS, COUNTS, q_hat=q_hat, split="test", true_prior=truth)
    assert m["test/p_true_many"] == m["test/p_few"] and m["test/p_true_few"] == m["test/p_many"]
    assert np.isnan(compute_metrics(logits, LABELS, COUNTS, q_hat=q_hat, split="test")["test/p_true_few"])
    err = prior_error(q_hat, truth)
    assert err["prior/spearman"] == pytest.approx(-1.0) and err["prior/tv"] == pytest.approx(0.3)
    same = prior_error(truth, truth)
    assert same["prior/spearman"] == pytest.approx(1.0) and same["prior/tv"] == pytest.approx(0.0)
