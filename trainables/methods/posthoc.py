"""Post-hoc corrections (``kind="posthoc"``) of a trained model's logits z. Notation as in
``losses.py``: p_s the downstream training prior, q_hat the estimated pre-training prior, z_zs / T the
backbone's zero-shot logits of the same examples divided by GLA's temperature (stage-1 cache)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field

from trainables.config import MethodConfig
from trainables.methods import LazyModule, Method, log_prior, log_train_prior, register

if TYPE_CHECKING:
    import torch
else:
    torch = LazyModule("torch")

from trainables.methods.losses import tau_field


def _posthoc_la(logits: torch.Tensor, cfg: "_PosthocConfig", train_counts: np.ndarray,
                q_hat: np.ndarray | None, zeroshot: torch.Tensor | None) -> torch.Tensor:
    """posthoc_la: z - tau * log p_s (Menon et al. 2021's post-hoc logit adjustment)."""
    return logits - cfg.tau * log_train_prior(train_counts).to(logits.device, logits.dtype)


def _posthoc_prior(logits: torch.Tensor, cfg: "_PosthocConfig", train_counts: np.ndarray,
                   q_hat: np.ndarray | None, zeroshot: torch.Tensor | None) -> torch.Tensor:
    """posthoc_prior: z - tau * log p_s - log q_hat, both priors subtracted from the fine-tuned
    logits alone (no zero-shot ensemble; not GLA's inference, see gla)."""
    assert q_hat is not None  # Method.adjust checked needs_prior
    return _posthoc_la(logits, cfg, train_counts, None, None) - log_prior(q_hat).to(logits.device, logits.dtype)


def _gla(logits: torch.Tensor, cfg: "_PosthocConfig", train_counts: np.ndarray,
         q_hat: np.ndarray | None, zeroshot: torch.Tensor | None) -> torch.Tensor:
    """gla: z_ft + z_zs / T - log q_hat - tau * log p_s, GLA's inference (Zhu et al. 2023; BeierZhu/GLA
    ``modeling.py`` ``gla_inference``): the fine-tuned model carries the downstream prior p_s, the
    zero-shot model the pre-training prior q_hat; their sum with both removed. T is GLA's temperature
    and q_hat is estimated from z_zs / T on val (``trainables.prior``)."""
    assert q_hat is not None and zeroshot is not None  # Method.adjust checked both
    return (logits + zeroshot - log_prior(q_hat).to(logits.device, logits.dtype)
            - cfg.tau * log_train_prior(train_counts).to(logits.device, logits.dtype))


class _PosthocConfig(MethodConfig):
    tau: float = tau_field()
    base_method: str = Field("ce", description="the training method whose logits this corrects")


class PosthocLAConfig(_PosthocConfig):
    name: Literal["posthoc_la"] = "posthoc_la"


class PosthocPriorConfig(_PosthocConfig):
    name: Literal["posthoc_prior"] = "posthoc_prior"


class GLAConfig(_PosthocConfig):
    name: Literal["gla"] = "gla"


register(Method("posthoc_la", "posthoc", adjust_fn=_posthoc_la, config=PosthocLAConfig,
                doc=_posthoc_la.__doc__ or ""))
register(Method("posthoc_prior", "posthoc", adjust_fn=_posthoc_prior, needs_prior=True,
                config=PosthocPriorConfig, doc=_posthoc_prior.__doc__ or ""))
register(Method("gla", "posthoc", adjust_fn=_gla, needs_prior=True, needs_zeroshot=True, config=GLAConfig,
                doc=_gla.__doc__ or ""))
