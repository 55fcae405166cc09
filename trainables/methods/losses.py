"""Training losses (``kind="train"``). Notation: z the logits [B, C], y the labels, n_c the training
images of class c, p_s = n / sum(n), q_hat the backbone's estimated pre-training prior.

Loss objects are small picklable classes that move their per-class constants to the logits' device
on use, so one object serves CPU and GPU, and compute in float32 whatever the logits' dtype (AMP).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from trainables.config import MethodConfig
from trainables.methods import LossFn, LazyModule, Method, log_prior, log_train_prior, register

if TYPE_CHECKING:
    import torch
    import torch.nn.functional as F
else:
    torch, F = LazyModule("torch"), LazyModule("torch.nn.functional")


class ShiftedCE:
    """CE(z + shift, y): plain CE when ``shift`` is None, otherwise a logit-adjusted CE."""

    def __init__(self, shift: torch.Tensor | None = None) -> None:
        self.shift = shift

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, epoch: int) -> torch.Tensor:
        z = logits.float()
        if self.shift is not None:
            z = z + self.shift.to(z.device)
        return F.cross_entropy(z, labels)


class FocalLoss:
    """mean_i -(1 - p_i)^gamma log p_i, p_i = softmax(z_i)_{y_i} (Lin et al. 2017)."""

    def __init__(self, gamma: float) -> None:
        self.gamma = gamma

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, epoch: int) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1).gather(1, labels[:, None]).squeeze(1)
        return (-(1 - log_p.exp()) ** self.gamma * log_p).mean()


class WeightedCE:
    """sum_i w_{y_i} CE_i / sum_i w_{y_i} (``F.cross_entropy(weight=w)``, the form LDAM-DRW and LIFT use)."""

    def __init__(self, weights: torch.Tensor) -> None:
        self.weights = weights

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, epoch: int) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels, weight=self.weights.to(logits.device))


class LDAMDRWLoss:
    """LDAM with deferred re-weighting: CE(z - s * m_y * onehot(y), y), class-balanced weights from
    epoch ``drw_start`` on (uniform before)."""

    def __init__(self, margins: torch.Tensor, scale: float, weights: torch.Tensor, drw_start: int) -> None:
        self.margins, self.scale, self.weights, self.drw_start = margins, scale, weights, drw_start

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, epoch: int) -> torch.Tensor:
        z = logits.float()
        margin = self.scale * self.margins.to(z.device)[labels]
        z = z - F.one_hot(labels, z.shape[1]).to(z.dtype) * margin[:, None]
        weight = self.weights.to(z.device) if epoch >= self.drw_start else None
        return F.cross_entropy(z, labels, weight=weight)


def class_balanced_weights(train_counts: np.ndarray, beta: float) -> torch.Tensor:
    """w_c = (1 - beta) / (1 - beta^n_c), normalised to sum to C (Cui et al. 2019's effective number).

    beta = 0 gives w = 1 (plain CE). A class without images is counted as one image.
    """
    n = np.maximum(np.asarray(train_counts, dtype=np.float64), 1.0)
    w = (1.0 - beta) / (1.0 - np.power(beta, n))
    return torch.from_numpy(w / w.sum() * len(n)).float()


def ldam_margins(train_counts: np.ndarray, max_margin: float) -> torch.Tensor:
    """m_c proportional to n_c^(-1/4), scaled so that the rarest class gets ``max_margin`` (Cao et al. 2019)."""
    n = np.maximum(np.asarray(train_counts, dtype=np.float64), 1.0)
    m = n ** -0.25
    return torch.from_numpy(m * (max_margin / m.max())).float()


def _ce(cfg: MethodConfig, train_counts: np.ndarray, epochs: int, q_hat: np.ndarray | None,
        logit_scale: float) -> LossFn:
    """ce: mean_i -log softmax(z_i)_{y_i}."""
    return ShiftedCE()


def _focal(cfg: "FocalConfig", train_counts: np.ndarray, epochs: int, q_hat: np.ndarray | None,
        logit_scale: float) -> LossFn:
    """focal: mean_i -(1 - p_i)^gamma log p_i with p_i = softmax(z_i)_{y_i}; gamma = 0 is CE."""
    return FocalLoss(cfg.gamma)


def _cb(cfg: "CBConfig", train_counts: np.ndarray, epochs: int, q_hat: np.ndarray | None,
        logit_scale: float) -> LossFn:
    """cb: class-balanced CE, sum_i w_{y_i} CE_i / sum_i w_{y_i}, w_c = (1 - beta) / (1 - beta^n_c)
    normalised to sum C; beta = 0 is CE."""
    return WeightedCE(class_balanced_weights(train_counts, cfg.beta))


def _ldam_drw(cfg: "LDAMDRWConfig", train_counts: np.ndarray, epochs: int, q_hat: np.ndarray | None,
        logit_scale: float) -> LossFn:
    """ldam_drw: CE(z - s * m_y * onehot(y)) with m_c = ldam_max_margin * (n_min / n_c)^(1/4) and s the
    scale the head's logits already carry (finetune.cosine_scale for cosine and text heads, 1 for a
    linear head): one shared scale, as in LIFT's LDAM (utils/losses.py, s = cfg.scale = 25). From epoch
    floor(drw_epoch_frac * epochs) (0-based) on, weighted by the cb weights with beta (LDAM-DRW)."""
    return LDAMDRWLoss(ldam_margins(train_counts, cfg.ldam_max_margin), logit_scale,
                       class_balanced_weights(train_counts, cfg.beta), math.floor(cfg.drw_epoch_frac * epochs))


def _bs(cfg: MethodConfig, train_counts: np.ndarray, epochs: int, q_hat: np.ndarray | None,
        logit_scale: float) -> LossFn:
    """bs: balanced softmax, CE(z + log p_s) (Ren et al. 2020)."""
    return ShiftedCE(log_train_prior(train_counts))


def _la(cfg: "LAConfig", train_counts: np.ndarray, epochs: int, q_hat: np.ndarray | None,
        logit_scale: float) -> LossFn:
    """la: logit-adjusted loss, CE(z + tau * log p_s) (Menon et al. 2021); tau = 1 is bs."""
    return ShiftedCE(cfg.tau * log_train_prior(train_counts))


def _gla_train(cfg: "GLATrainConfig", train_counts: np.ndarray, epochs: int, q_hat: np.ndarray | None,
        logit_scale: float) -> LossFn:
    """gla_train: CE(z + tau * log p_s + log q_hat), both priors in the training loss."""
    assert q_hat is not None  # Method.make_loss checked needs_prior
    return ShiftedCE(cfg.tau * log_train_prior(train_counts) + log_prior(q_hat))


def _crt(cfg: MethodConfig, train_counts: np.ndarray, epochs: int, q_hat: np.ndarray | None,
        logit_scale: float) -> LossFn:
    """crt: CE in both phases; the loop retrains the head on frozen features with class-balanced
    sampling for crt_epochs after stage A (Kang et al. 2020)."""
    return ShiftedCE()


def tau_field() -> Any:
    """The logit-adjustment temperature (la, gla_train and the post-hoc corrections)."""
    return Field(1.0, description="logit-adjustment temperature")


def beta_field() -> Any:
    return Field(0.9999, ge=0, lt=1, description="class-balanced effective-number beta")


class CEConfig(MethodConfig):
    name: Literal["ce"] = "ce"


class FocalConfig(MethodConfig):
    name: Literal["focal"] = "focal"
    gamma: float = Field(1.0, ge=0, description="focal loss exponent")


class CBConfig(MethodConfig):
    name: Literal["cb"] = "cb"
    beta: float = beta_field()


class LDAMDRWConfig(MethodConfig):
    name: Literal["ldam_drw"] = "ldam_drw"
    ldam_max_margin: float = Field(0.5, gt=0, description="the rarest class's margin")
    drw_epoch_frac: float = Field(0.8, ge=0, le=1, description="re-weighting starts at this fraction of epochs")
    beta: float = beta_field()


class BSConfig(MethodConfig):
    name: Literal["bs"] = "bs"


class LAConfig(MethodConfig):
    name: Literal["la"] = "la"
    tau: float = tau_field()


class GLATrainConfig(MethodConfig):
    name: Literal["gla_train"] = "gla_train"
    tau: float = tau_field()


class CRTConfig(MethodConfig):
    name: Literal["crt"] = "crt"
    crt_epochs: int = Field(5, ge=1, description="epochs of class-balanced head retraining")


# (name, loss factory, its config, extra Method flags)
for _name, _factory, _config, _extra in (
        ("ce", _ce, CEConfig, {}), ("focal", _focal, FocalConfig, {}), ("cb", _cb, CBConfig, {}),
        ("ldam_drw", _ldam_drw, LDAMDRWConfig, {}), ("bs", _bs, BSConfig, {}), ("la", _la, LAConfig, {}),
        ("gla_train", _gla_train, GLATrainConfig, {"needs_prior": True}),
        ("crt", _crt, CRTConfig, {"two_phase": True})):
    register(Method(_name, "train", loss_factory=_factory, config=_config, doc=_factory.__doc__ or "", **_extra))
