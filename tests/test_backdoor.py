"""The backdoor adjustment's aggregation and weighting (pure functions, no fine-tuning)."""

from __future__ import annotations

import numpy as np
import pytest

from trainables.methods import backdoor as bd


def _strata(m: int, n: int = 300, c: int = 7, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    strata = []
    for k in range(m):
        z = rng.normal(0, 1.0, (n, c))
        # each stratum knows the true class with its own strength: not all equally good
        z[np.arange(n), labels] += 0.5 + 0.7 * k
        strata.append(z)
    return strata, labels


@pytest.mark.parametrize("space", ["logit", "prob", "logprob"])
def test_single_stratum_with_uniform_weight_reproduces_its_predictions(space):
    (z,), _ = _strata(1)
    scores = bd.aggregate([z], bd.uniform_weights(1), space)
    assert np.array_equal(scores.argmax(1), z.argmax(1))


def test_uniform_logit_aggregation_is_argmax_of_summed_logits():
    strata, _ = _strata(3)
    scores = bd.aggregate(strata, bd.uniform_weights(3), "logit")
    assert np.array_equal(scores.argmax(1), (strata[0] + strata[1] + strata[2]).argmax(1))
    assert np.allclose(scores, sum(strata) / 3)


def test_prob_space_is_mixture_of_softmaxes():
    strata, _ = _strata(2)
    w = np.array([0.25, 0.75])
    expected = np.log(w[0] * _softmax(strata[0]) + w[1] * _softmax(strata[1]))
    assert np.allclose(bd.aggregate(strata, w, "prob"), expected, atol=1e-9)


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("space", ["logit", "logprob", "prob"])
def test_fitted_weights_never_do_worse_on_validation_than_uniform(seed, space):
    strata, labels = _strata(4, seed=seed)
    fitted = bd.fit_weights(strata, labels, space)
    assert fitted.shape == (4,) and np.isclose(fitted.sum(), 1) and (fitted >= 0).all()
    acc_fit = bd.accuracy(bd.aggregate(strata, fitted, space), labels)
    acc_uni = bd.accuracy(bd.aggregate(strata, bd.uniform_weights(4), space), labels)
    assert acc_fit >= acc_uni


def test_fitted_weights_favour_the_informative_stratum():
    rng = np.random.default_rng(3)
    n, c = 400, 5
    labels = rng.integers(0, c, n)
    noise = rng.normal(0, 1, (n, c))
    good = rng.normal(0, 1, (n, c))
    good[np.arange(n), labels] += 3.0
    w = bd.fit_weights([noise, good], labels, "logit")
    assert w[1] > 0.7


def test_bias_conditional_weights_favour_the_stratum_that_saw_a_class_rarely():
    q_a = np.array([0.7, 0.2, 0.1])
    q_b = np.array([0.1, 0.2, 0.7])
    w = bd.bias_conditional_weights([q_a, q_b], temperature=1.0)
    assert w.shape == (2, 3) and np.allclose(w.sum(0), 1)
    assert w[1, 0] > w[0, 0] and w[0, 2] > w[1, 2] and np.isclose(w[0, 1], 0.5)
    assert np.allclose(bd.bias_conditional_weights([q_a, q_b], temperature=0.0), 0.5)


def test_class_conditional_weights_apply_per_class():
    strata, _ = _strata(2)
    w = np.array([[1.0, 0.0, 1, 1, 1, 1, 1], [0.0, 1.0, 0, 0, 0, 0, 0]])
    s = bd.aggregate(strata, w, "logit")
    assert np.allclose(s[:, 0], strata[0][:, 0]) and np.allclose(s[:, 1], strata[1][:, 1])


def test_debias_la_and_gla_subtract_the_log_priors():
    z = np.zeros((2, 3))
    counts = np.array([80, 15, 5])
    q = np.array([0.2, 0.3, 0.5])
    la = bd.debias(z, "la", counts, q, tau=1.0)
    assert np.allclose(la[0], -np.log(counts / counts.sum()), atol=1e-6)
    gla = bd.debias(z, "gla", counts, q, tau=1.0)
    assert np.allclose(gla[0] - la[0], -np.log(q), atol=1e-6)
    with pytest.raises(ValueError, match="zero-shot"):
        bd.debias(z, "gla", counts, None)


def test_searched_weights_are_normalised_onto_the_simplex():
    assert np.allclose(bd.normalise_weights([2, 0, 2]), [0.5, 0, 0.5])
    assert np.allclose(bd.normalise_weights([0, 0]), [0.5, 0.5])


@pytest.mark.parametrize("debias,trained_with", [("la", "la"), ("gla", "bs"), ("posthoc_la", "la"), ("gla", "gla_train")])
def test_a_post_hoc_correction_of_an_already_adjusted_loss_is_refused(debias, trained_with):
    with pytest.raises(ValueError, match="subtracts log p_s twice"):
        bd.check_not_double_corrected(debias, trained_with, "backdoor.debias", "backdoor.stratum_method")
    bd.check_not_double_corrected(debias, "ce", "backdoor.debias", "backdoor.stratum_method")
    bd.check_not_double_corrected("none", trained_with, "backdoor.debias", "backdoor.stratum_method")
