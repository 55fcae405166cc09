"""The GLA prior estimator recovers a known prior from synthetic biased logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainables.prior import estimate_prior, fit_temperature

C, PER_CLASS = 10, 300


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def _balanced_split(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated class-balanced logits: x = s e_y + sigma eps has posterior softmax(s x / sigma^2)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(C), PER_CLASS)
    s, sigma = 2.0, 1.0
    x = s * np.eye(C)[y] + sigma * rng.normal(size=(len(y), C))
    return s * x / sigma**2, y


def _prior(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.full(C, 0.7))


def test_recovers_a_known_prior_from_biased_logits():
    clean, y = _balanced_split(0)
    q_true = _prior(1)
    q_hat = estimate_prior(clean + np.log(q_true), y)
    assert q_hat.shape == (C,) and q_hat.sum() == pytest.approx(1.0) and (q_hat > 0).all()
    assert _spearman(q_hat, q_true) > 0.95
    assert np.abs(q_hat - q_true).sum() < 0.1


def test_uniform_prior_gives_an_almost_uniform_estimate():
    clean, y = _balanced_split(2)
    q_hat = estimate_prior(clean, y)
    assert np.abs(q_hat - 1 / C).max() < 0.02


def test_estimate_is_deterministic_and_accepts_torch():
    clean, y = _balanced_split(3)
    z = clean + np.log(_prior(4))
    a = estimate_prior(z, y)
    b = estimate_prior(torch.from_numpy(z).float(), torch.from_numpy(y))
    assert np.array_equal(a, estimate_prior(z, y))
    assert np.abs(a - b).max() < 1e-4


def test_temperature_calibration_undoes_overconfident_logits():
    clean, y = _balanced_split(5)
    q_true = _prior(6)
    z = 3.0 * (clean + np.log(q_true))  # over-confident by a factor 3
    assert fit_temperature(clean * 3.0, y) == pytest.approx(3.0, rel=0.1)  # unbiased logits: T alone
    calibrated = estimate_prior(z, y, calibrate_temperature=True)
    raw = estimate_prior(z, y)
    assert np.abs(calibrated - q_true).sum() < 0.1
    assert np.abs(calibrated - q_true).sum() < np.abs(raw - q_true).sum()


def test_non_finite_logits_are_rejected():
    z = np.zeros((4, 3))
    z[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        estimate_prior(z, np.array([0, 1, 2, 0]))
