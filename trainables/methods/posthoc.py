"""Post-hoc corrections (``kind="posthoc"``) of a trained model's logits z. Notation as in
``losses.py``: p_s the downstream training prior, q_hat the estimated pre-training prior, z_zs / T the
backbone's zero-shot logits of the same examples divided by GLA's temperature (stage-1 cache)."""

from __future__ import annotations

import numpy as np
import torch

from trainables.config import MethodConfig
from trainables.methods import Method, log_prior, log_train_prior, register


def _posthoc_la(logits: torch.Tensor, cfg: MethodConfig, train_counts: np.ndarray,
                q_hat: np.ndarray | None, zeroshot: torch.Tensor | None) -> torch.Tensor:
    """posthoc_la: z - tau * log p_s (Menon et al. 2021's post-hoc logit adjustment)."""
    return logits - cfg.tau * log_train_prior(train_counts).to(logits.device, logits.dtype)


def _posthoc_prior(logits: torch.Tensor, cfg: MethodConfig, train_counts: np.ndarray,
                   q_hat: np.ndarray | None, zeroshot: torch.Tensor | None) -> torch.Tensor:
    """posthoc_prior: z - tau * log p_s - log q_hat, both priors subtracted from the fine-tuned
    logits alone (no zero-shot ensemble; not GLA's inference, see gla)."""
    assert q_hat is not None  # Method.adjust checked needs_prior
    return _posthoc_la(logits, cfg, train_counts, None, None) - log_prior(q_hat).to(logits.device, logits.dtype)


def _gla(logits: torch.Tensor, cfg: MethodConfig, train_counts: np.ndarray,
         q_hat: np.ndarray | None, zeroshot: torch.Tensor | None) -> torch.Tensor:
    """gla: z_ft + z_zs / T - log q_hat - tau * log p_s, GLA's inference (Zhu et al. 2023; BeierZhu/GLA
    ``modeling.py`` ``gla_inference``): the fine-tuned model carries the downstream prior p_s, the
    zero-shot model the pre-training prior q_hat; their sum with both removed. T is GLA's temperature
    and q_hat is estimated from z_zs / T on val (``trainables.prior``)."""
    assert q_hat is not None and zeroshot is not None  # Method.adjust checked both
    return (logits + zeroshot - log_prior(q_hat).to(logits.device, logits.dtype)
            - cfg.tau * log_train_prior(train_counts).to(logits.device, logits.dtype))


register(Method("posthoc_la", "posthoc", adjust_fn=_posthoc_la, params=("tau", "base_method"),
                doc=_posthoc_la.__doc__ or ""))
register(Method("posthoc_prior", "posthoc", adjust_fn=_posthoc_prior, needs_prior=True,
                params=("tau", "base_method"), doc=_posthoc_prior.__doc__ or ""))
register(Method("gla", "posthoc", adjust_fn=_gla, needs_prior=True, needs_zeroshot=True, params=("tau", "base_method"),
                doc=_gla.__doc__ or ""))
