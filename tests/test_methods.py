"""Long-tail methods: every loss and correction against an independent computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainables.config import method_config
from trainables.methods import METHODS, Method, get_method

C, B = 5, 16
COUNTS = np.array([400, 120, 40, 10, 2])
Q_HAT = np.array([0.1, 0.4, 0.05, 0.25, 0.2])


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(B, C, generator=g, dtype=torch.float64) * 3, torch.randint(0, C, (B,), generator=g)


def _loss(name: str, logits: torch.Tensor, labels: torch.Tensor, epoch: int = 0, epochs: int = 10,
          logit_scale: float = 1.0, **cfg) -> float:
    fn = get_method(name).make_loss(method_config(name=name, **cfg), COUNTS, epochs, Q_HAT, logit_scale)
    return float(fn(logits, labels, epoch))


def _ce_ref(z: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> float:
    """Independent CE: -log softmax(z)_y, mean (or w_y-weighted mean)."""
    z = z - z.max(axis=1, keepdims=True)
    nll = -(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(axis=1)))
    w = np.ones(len(y)) if w is None else w[y]
    return float((w * nll).sum() / w.sum())


def _log_ps() -> np.ndarray:
    return np.log(COUNTS / COUNTS.sum())


def _cb_weights(beta: float) -> np.ndarray:
    w = np.array([(1 - beta) / (1 - beta**n) for n in COUNTS])
    return w * C / w.sum()


def test_registry_holds_every_method_with_its_kind():
    train = {"ce", "focal", "cb", "ldam_drw", "bs", "la", "gla_train", "crt"}
    for name in train:
        assert get_method(name).kind == "train"
    assert get_method("posthoc_la").kind == "posthoc" and get_method("gla").kind == "posthoc"
    assert {m for m in METHODS.names() if get_method(m).needs_prior} == {"gla", "gla_train", "posthoc_prior"}
    assert {m for m in METHODS.names() if get_method(m).needs_zeroshot} == {"gla"}
    assert [m for m in METHODS.names() if get_method(m).two_phase] == ["crt"]
    assert all(get_method(m).doc for m in train)


def test_ce(batch):
    z, y = batch
    assert _loss("ce", z, y) == pytest.approx(_ce_ref(z.numpy(), y.numpy()), rel=1e-5)
    assert _loss("crt", z, y) == pytest.approx(_ce_ref(z.numpy(), y.numpy()), rel=1e-5)


def test_focal_matches_formula_and_gamma_zero_is_ce(batch):
    z, y = batch
    zn, yn = z.numpy(), y.numpy()
    p = np.exp(zn - zn.max(1, keepdims=True))
    p = (p / p.sum(1, keepdims=True))[np.arange(B), yn]
    assert _loss("focal", z, y, gamma=2.0) == pytest.approx(float(np.mean(-(1 - p) ** 2 * np.log(p))), rel=1e-5)
    assert _loss("focal", z, y, gamma=0.0) == pytest.approx(_loss("ce", z, y), rel=1e-6)


def test_cb_matches_effective_number_weights_and_beta_zero_is_ce(batch):
    z, y = batch
    for beta in (0.9, 0.999):
        assert _loss("cb", z, y, beta=beta) == pytest.approx(_ce_ref(z.numpy(), y.numpy(), _cb_weights(beta)), rel=1e-5)
    assert _loss("cb", z, y, beta=0.0) == pytest.approx(_loss("ce", z, y), rel=1e-6)
    assert _cb_weights(0.999)[-1] > _cb_weights(0.999)[0]  # the rare class weighs more


def test_balanced_softmax_and_logit_adjusted(batch):
    z, y = batch
    ref_bs = _ce_ref(z.numpy() + _log_ps(), y.numpy())
    assert _loss("bs", z, y) == pytest.approx(ref_bs, rel=1e-5)
    assert _loss("la", z, y, tau=1.0) == pytest.approx(_loss("bs", z, y), rel=1e-6)
    assert _loss("la", z, y, tau=0.5) == pytest.approx(_ce_ref(z.numpy() + 0.5 * _log_ps(), y.numpy()), rel=1e-5)
    assert _loss("la", z, y, tau=0.0) == pytest.approx(_loss("ce", z, y), rel=1e-6)


def test_gla_train_adds_both_priors(batch):
    z, y = batch
    ref = _ce_ref(z.numpy() + 0.7 * _log_ps() + np.log(Q_HAT), y.numpy())
    assert _loss("gla_train", z, y, tau=0.7) == pytest.approx(ref, rel=1e-5)


def test_ldam_margins_largest_for_the_rarest_class_and_drw_switches_on(batch):
    z, y = batch
    cfg = dict(ldam_max_margin=0.5, beta=0.999, drw_epoch_frac=0.8, logit_scale=30.0)
    m = (1 / COUNTS ** 0.25)
    m = m * 0.5 / m.max()
    assert m.argmax() == C - 1 and m.max() == pytest.approx(0.5)
    shifted = z.numpy() - 30.0 * m[y.numpy()][:, None] * np.eye(C)[y.numpy()]
    # epochs = 10, drw from floor(0.8 * 10) = 8: uniform weights at epoch 7, cb weights at epoch 8.
    assert _loss("ldam_drw", z, y, epoch=7, **cfg) == pytest.approx(_ce_ref(shifted, y.numpy()), rel=1e-5)
    assert _loss("ldam_drw", z, y, epoch=8, **cfg) == pytest.approx(
        _ce_ref(shifted, y.numpy(), _cb_weights(0.999)), rel=1e-5)
    assert _loss("ldam_drw", z, y, epoch=7, **cfg) > _loss("ce", z, y)  # margins make the loss harder


def test_losses_are_float32_scalars_with_gradients_for_half_precision_logits(batch):
    z, y = batch
    for name in ("ce", "focal", "cb", "ldam_drw", "bs", "la", "gla_train", "crt"):
        logits = z.to(torch.bfloat16).requires_grad_()
        loss = get_method(name).make_loss(method_config(name=name), COUNTS, 10, Q_HAT)(logits, y, 9)
        loss.backward()
        assert loss.dtype == torch.float32 and loss.ndim == 0 and math.isfinite(loss.item())
        assert logits.grad is not None and torch.isfinite(logits.grad.float()).all()


def test_posthoc_la_and_gla_formulas_for_numpy_and_torch(batch):
    z, _ = batch
    zn = z.numpy()
    cfg = method_config(name="posthoc_la", tau=0.8)
    out = get_method("posthoc_la").adjust(zn, cfg, COUNTS, None)
    assert isinstance(out, np.ndarray) and np.allclose(out, zn - 0.8 * _log_ps(), atol=1e-5)
    out_t = get_method("posthoc_prior").adjust(z, method_config(name="posthoc_prior", tau=0.8), COUNTS, Q_HAT)
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == z.dtype
    assert np.allclose(out_t.numpy(), zn - 0.8 * _log_ps() - np.log(Q_HAT), atol=1e-5)
    zs = np.random.default_rng(1).normal(size=zn.shape)
    out_g = get_method("gla").adjust(zn, method_config(name="gla", tau=0.8), COUNTS, Q_HAT, zs)
    assert np.allclose(out_g, zn + zs - np.log(Q_HAT) - 0.8 * _log_ps(), atol=1e-5)


def test_gla_without_zero_shot_logits_points_to_posthoc_la(batch):
    with pytest.raises(ValueError, match="zero-shot logits of the same examples.*use posthoc_la"):
        get_method("gla").adjust(batch[0], method_config(name="gla"), COUNTS, Q_HAT)


def test_posthoc_la_with_tau_one_turns_prior_shifted_logits_back():
    # logits z + log p_s adjusted by tau = 1 give back z's argmax
    z = np.random.default_rng(0).normal(size=(32, C))
    out = get_method("posthoc_la").adjust(z + _log_ps(), method_config(name="posthoc_la", tau=1.0), COUNTS)
    assert np.array_equal(out.argmax(1), z.argmax(1))


def test_methods_that_need_the_prior_refuse_to_run_without_it(batch):
    with pytest.raises(ValueError, match="'gla_train' needs q_hat"):
        get_method("gla_train").make_loss(method_config(name="gla_train"), COUNTS, 10, None)
    with pytest.raises(ValueError, match="'gla' needs q_hat"):
        get_method("gla").adjust(batch[0], method_config(name="gla"), COUNTS, None)


def test_kind_mismatch_errors_name_the_method():
    with pytest.raises(ValueError, match="'posthoc_la' is a posthoc method and has no training loss"):
        get_method("posthoc_la").make_loss(method_config(name="posthoc_la"), COUNTS, 10, None)
    with pytest.raises(ValueError, match="'la' is a train method and has no post-hoc adjustment"):
        get_method("la").adjust(np.zeros((1, C)), method_config(name="la"), COUNTS)


def test_unknown_method_suggests_the_closest():
    with pytest.raises(KeyError, match="did you mean 'ldam_drw'"):
        get_method("ldam-drw")


def test_an_ensemble_method_can_be_registered():
    from trainables.registry import Registry
    reg: Registry[Method] = Registry("method")
    reg.register("backdoor")(Method("backdoor", "ensemble"))
    assert reg.get("backdoor").kind == "ensemble"


def test_stage1_key_of_an_existing_method_is_unchanged_by_per_method_configs():
    # computed with the shared MethodConfig (before each method owned its config): same fields, same key
    from trainables.cache import stage1_key
    from trainables.config import TrialConfig
    cfg = TrialConfig.model_validate({"method": {"name": "la", "tau": 0.5}})
    assert stage1_key(cfg) == "5e2a5e60ff432f9c70408919f8e80ad2d60425def22daa1c9ee90bfa77efddbf"
    assert get_method("ldam_drw").params == ("ldam_max_margin", "drw_epoch_frac", "beta")
