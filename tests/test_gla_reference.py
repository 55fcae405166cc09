"""GLA as GLA does it: temperature calibration, prior estimation and the zero-shot + fine-tuned
ensemble, compared with a port of GLA's routine on the same logits.

Reference: BeierZhu/GLA at commit efbcd6018929a62f1da4afdd1260bc2e90596ea2 (the code is in zip
archives there): ``GLA.FS.public/trainers/util.py`` (``Calibrater`` lines 178-227, ``pp_solver``
lines 31-48, ``CLIP.pp_estimate`` lines 410-431) and ``GLA.public/src/models/modeling.py``
(``gla_inference`` lines 11-17). The ``_gla_*`` functions port those lines to check our code.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainables.config import method_config
from trainables.methods import get_method
from trainables.prior import estimate_prior, gla_temperature

C, PER_CLASS = 12, 80


class _GlaCalibrater:
    """Port of GLA's ``Calibrater`` with ``model.inference(features)`` = the logits themselves."""

    def __init__(self, logits):
        self.logits = logits

    @torch.no_grad()
    def compute_confidence(self, features, T):
        logits = features / T
        probability = F.softmax(logits, dim=-1)
        confidence, _ = torch.max(probability, dim=-1)
        confidence = confidence.mean().item()
        return 100 * confidence

    def search_T(self, features, acc, thres=0.1):
        T_min, T_max = 0.1, 10
        T_best, confidence = self.search_recurse(features, T_min, T_max, acc, thres)
        return T_best, confidence

    @torch.no_grad()
    def search_recurse(self, features, T_min, T_max, acc, thres):
        conf_min = self.compute_confidence(features, T_min)
        gap_min = abs(conf_min - acc)
        conf_max = self.compute_confidence(features, T_max)
        gap_max = abs(conf_max - acc)
        alpha = gap_min / (gap_min + gap_max)
        T_mid = T_min * (1 - alpha) + T_max * alpha
        conf_mid = self.compute_confidence(features, T_mid)
        gap_mid = abs(conf_mid - acc)
        if gap_mid <= thres:
            return T_mid, conf_mid
        if conf_max > acc:
            T_max *= 1.1
        elif conf_min < acc:
            T_min /= 1.1
        elif gap_min < gap_max:
            T_max = T_mid
        else:
            T_min = T_mid
        return self.search_recurse(features, T_min, T_max, acc, thres)


def _gla_inference(zs_logits, ft_logits, q, p=None):
    """Port of GLA ``modeling.py`` ``gla_inference``."""
    if p is None:
        p = torch.ones_like(q) / zs_logits.size(1)
    logq = torch.log(q).to(zs_logits.device)
    logp = torch.log(p).to(ft_logits.device)
    return zs_logits + ft_logits - logq - logp


def _world(seed: int):
    """Zero-shot logits biased by a pre-training prior and over-confident; fine-tuned logits biased
    by the downstream prior p_s (a CE-trained model); labels of a balanced val split."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(C), PER_CLASS)
    q_true = rng.dirichlet(np.full(C, 0.8))
    counts = np.maximum((200 * 0.02 ** (np.arange(C) / (C - 1))).astype(int), 1)
    clean = 2.0 * (2.0 * np.eye(C)[y] + rng.normal(size=(len(y), C)))
    z_zs = 3.0 * (clean + np.log(q_true))  # T_true = 3
    z_ft = 2.0 * np.eye(C)[y] + rng.normal(size=(len(y), C)) * 1.5 + np.log(counts / counts.sum())
    return torch.from_numpy(z_zs), torch.from_numpy(z_ft), torch.from_numpy(y), counts


def test_temperature_is_glas_calibrater_search():
    z_zs, _, y, _ = _world(0)
    acc = 100 * (z_zs.argmax(1) == y).double().mean().item()
    t_ref, conf = _GlaCalibrater(z_zs).search_T(z_zs, acc)
    t_ours = gla_temperature(z_zs, y)
    assert abs(t_ours - t_ref) < 1e-9, (t_ours, t_ref)
    assert abs(conf - acc) <= 0.1 and t_ours > 1.5  # it found the over-confidence


def test_prior_is_the_minimiser_of_glas_pp_solver_objective():
    """pp_solver minimises CE(z / T - log q) over the simplex (with a Lagrangian); at that minimum
    the debiased model's mean probability of every class equals its share of the balanced split
    (the stationarity condition in the softmax parametrisation)."""
    z_zs, _, y, _ = _world(1)
    t = gla_temperature(z_zs, y)
    q = estimate_prior(z_zs / t, y)
    mean_p = torch.softmax(z_zs / t - torch.log(torch.from_numpy(q)), dim=1).mean(0).numpy()
    assert np.abs(mean_p - 1 / C).max() < 1e-6
    obj = lambda qq: F.cross_entropy(z_zs / t - torch.log(torch.as_tensor(qq)), y).item()  # noqa: E731
    rng = np.random.default_rng(2)
    for _ in range(20):  # any other point of the simplex nearby is worse
        other = np.clip(q * np.exp(0.05 * rng.normal(size=C)), 1e-12, None)
        assert obj(other / other.sum()) >= obj(q) - 1e-12


def test_gla_inference_equals_glas_routine_on_the_same_logits():
    z_zs, z_ft, y, counts = _world(3)
    # GLA's routine (pp_estimate then test): T from the calibrater, q from z / T, zero-shot logits
    # divided by T (CLIP.inference divides by self.T once set), then gla_inference with p = p_s.
    acc = 100 * (z_zs.argmax(1) == y).double().mean().item()
    t_ref, _ = _GlaCalibrater(z_zs).search_T(z_zs, acc)
    q = torch.from_numpy(estimate_prior(z_zs / t_ref, y))
    p_s = torch.from_numpy(counts / counts.sum())
    ref = _gla_inference(z_zs / t_ref, z_ft, q, p_s)
    t = gla_temperature(z_zs, y)
    ours = get_method("gla").adjust(z_ft.numpy(), method_config(name="gla", tau=1.0), counts, q.numpy(),
                                    (z_zs / t).numpy())
    diff = np.abs(ours - ref.numpy()).max()
    assert diff < 1e-5, diff  # float32 log priors against GLA's float64 here
    # and it is not the fine-tuned-only rule (posthoc_prior), which GLA's ensemble replaces
    only_ft = get_method("posthoc_prior").adjust(z_ft.numpy(), method_config(name="posthoc_prior"), counts, q.numpy())
    assert np.abs(only_ft - ref.numpy()).max() > 1.0


def test_ensemble_beats_the_fine_tuned_model_alone_on_this_world():
    z_zs, z_ft, y, counts = _world(4)
    t = gla_temperature(z_zs, y)
    q = estimate_prior(z_zs / t, y)
    gla = get_method("gla").adjust(z_ft.numpy(), method_config(name="gla"), counts, q, (z_zs / t).numpy())
    la = get_method("posthoc_la").adjust(z_ft.numpy(), method_config(name="posthoc_la"), counts)
    acc = lambda z: float((z.argmax(1) == y.numpy()).mean())  # noqa: E731
    assert acc(gla) > acc(la)


@pytest.mark.parametrize("missing", [[0], [0, 5]])
def test_prior_of_a_class_without_validation_examples_is_the_median_of_the_others(missing):
    z_zs, _, y, _ = _world(5)
    keep = ~np.isin(y.numpy(), missing)
    q = estimate_prior(z_zs[keep], y[keep])
    present = np.setdiff1d(np.arange(C), missing)
    assert q.sum() == pytest.approx(1.0) and np.isfinite(q).all()
    assert np.allclose(q[missing], np.median(q[present]))
    # the present classes keep their relative estimate (ratios) of the fit without the missing columns
    sub = estimate_prior(z_zs[keep][:, present], torch.from_numpy(np.searchsorted(present, y[keep].numpy())))
    np.testing.assert_allclose(q[present] / q[present].sum(), sub, rtol=1e-6)
