"""The backdoor adjustment's aggregation and weighting (pure functions, no fine-tuning)."""

from __future__ import annotations

import numpy as np
import pytest

from trainables.methods import backdoor as bd
from trainables.methods import weighting as W


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


def _inp(strata, labels, space="logit", shrinkage=0.5, weights=None):
    return W.WeightingInput(list(strata), np.asarray(labels), space, weights, list(range(len(strata))), shrinkage)


def _fit(strata, labels, space):
    return W.get_weighting("fitted").fn(_inp(strata, labels, space))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("space", ["logit", "logprob", "prob"])
def test_fitted_weights_never_do_worse_on_validation_than_uniform(seed, space):
    strata, labels = _strata(4, seed=seed)
    fitted = _fit(strata, labels, space)
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
    w = _fit([noise, good], labels, "logit")
    assert w[1] > 0.7


def test_reliability_is_invariant_to_a_constant_added_to_one_stratums_logits():
    strata, labels = _strata(3, seed=1)
    test, _ = _strata(3, seed=2)
    base = W.weights_for("reliability", _inp(strata, labels, "logprob"), test)
    shifted = [z + 5.0 * i for i, z in enumerate(strata)]
    shifted_test = [z + 5.0 * i for i, z in enumerate(test)]
    moved = W.weights_for("reliability", _inp(shifted, labels, "logprob"), shifted_test)
    assert np.allclose(base.weights, moved.weights)
    assert np.allclose(base.val_scores, moved.val_scores) and np.allclose(base.test_scores, moved.test_scores)
    # in logit space the same shift moves class-conditional scores by a class-dependent amount,
    # which is why the rule is refused there
    delta = bd.aggregate(shifted, base.weights, "logit") - bd.aggregate(strata, base.weights, "logit")
    assert not np.allclose(delta, delta[:, :1])
    with pytest.raises(ValueError, match="aggregation"):
        W.weights_for("reliability", _inp(strata, labels, "logit"), test)


def test_reliability_weights_follow_per_class_f1_and_shrink_to_uniform():
    rng = np.random.default_rng(0)
    n, c = 600, 4
    labels = rng.integers(0, c, n)
    a, b = rng.normal(0, 1, (n, c)), rng.normal(0, 1, (n, c))
    a[np.arange(n), labels] += np.where(labels < 2, 4.0, 0.0)  # a knows classes 0, 1
    b[np.arange(n), labels] += np.where(labels >= 2, 4.0, 0.0)  # b knows classes 2, 3
    rule = W.get_weighting("reliability").fn
    w = rule(_inp([a, b], labels, "logprob", shrinkage=0.0))
    assert w.shape == (2, c) and np.allclose(w.sum(0), 1)
    assert (w[0, :2] > 0.6).all() and (w[1, 2:] > 0.6).all()
    assert np.allclose(rule(_inp([a, b], labels, "logprob", shrinkage=1.0)), 0.5)


def test_fitted_rules_are_cross_fitted_on_validation():
    strata, labels = _strata(3, seed=4)
    test, _ = _strata(3, seed=5)
    out = W.weights_for("fitted", _inp(strata, labels, "logit"), test)
    fold = W.stratified_folds(labels)
    counts = [np.bincount(labels[fold == k], minlength=7) for k in range(2)]
    assert np.abs(counts[0] - counts[1]).max() <= 1  # class-stratified halves
    for k in range(2):  # half k is scored with the weights fitted on the other half only
        other = fold != k
        wk = _fit([z[other] for z in strata], labels[other], "logit")
        assert np.allclose(out.val_scores[fold == k], bd.aggregate([z[fold == k] for z in strata], wk, "logit"))
    assert np.allclose(out.weights, _fit(strata, labels, "logit"))  # test: fitted on all of validation
    assert np.allclose(out.test_scores, bd.aggregate(test, out.weights, "logit"))


def test_weighting_rules_are_one_registry():
    assert W.WEIGHTINGS.names() == ["fitted", "reliability", "searched", "uniform"]
    with pytest.raises(KeyError, match="did you mean 'reliability'"):
        W.get_weighting("reliabilty")


def test_class_conditional_weights_apply_per_class():
    strata, _ = _strata(2)
    w = np.array([[1.0, 0.0, 1, 1, 1, 1, 1], [0.0, 1.0, 0, 0, 0, 0, 0]])
    s = bd.aggregate(strata, w, "logit")
    assert np.allclose(s[:, 0], strata[0][:, 0]) and np.allclose(s[:, 1], strata[1][:, 1])


def test_debias_la_and_prior_subtract_the_log_priors():
    z = np.zeros((2, 3))
    counts = np.array([80, 15, 5])
    q = np.array([0.2, 0.3, 0.5])
    la = bd.debias(z, "la", counts, q, tau=1.0)
    assert np.allclose(la[0], -np.log(counts / counts.sum()), atol=1e-6)
    pri = bd.debias(z, "prior", counts, q, tau=1.0)
    assert np.allclose(pri[0] - la[0], -np.log(q), atol=1e-6)
    with pytest.raises(ValueError, match="zero-shot"):
        bd.debias(z, "prior", counts, None)


def test_searched_weights_are_normalised_onto_the_simplex():
    assert np.allclose(bd.normalise_weights([2, 0, 2]), [0.5, 0, 0.5])
    assert np.allclose(bd.normalise_weights([0, 0]), [0.5, 0.5])


@pytest.mark.parametrize("debias,trained_with", [("la", "la"), ("prior", "bs"), ("posthoc_la", "la"), ("prior", "gla_train")])
def test_a_post_hoc_correction_of_an_already_adjusted_loss_is_refused(debias, trained_with):
    with pytest.raises(ValueError, match="subtracts log p_s twice"):
        bd.check_not_double_corrected(debias, trained_with, "backdoor.debias", "backdoor.stratum_method")
    bd.check_not_double_corrected(debias, "ce", "backdoor.debias", "backdoor.stratum_method")
    bd.check_not_double_corrected("none", trained_with, "backdoor.debias", "backdoor.stratum_method")
