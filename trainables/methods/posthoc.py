"""Post-hoc corrections (``kind="posthoc"``) of a trained model's logits z. Notation as in
``losses.py``: p_s the downstream training prior, q_hat the estimated pre-training prior."""

from __future__ import annotations

import numpy as np
import torch

from trainables.config import MethodConfig
from trainables.methods import Method, log_prior, log_train_prior, register


def _posthoc_la(logits: torch.Tensor, cfg: MethodConfig, train_counts: np.ndarray,
                q_hat: np.ndarray | None) -> torch.Tensor:
    """posthoc_la: z - tau * log p_s (Menon et al. 2021's post-hoc logit adjustment)."""
    return logits - cfg.tau * log_train_prior(train_counts).to(logits.device, logits.dtype)


def _gla(logits: torch.Tensor, cfg: MethodConfig, train_counts: np.ndarray,
         q_hat: np.ndarray | None) -> torch.Tensor:
    """gla: z - tau * log p_s - log q_hat, removing both the downstream and the pre-training prior."""
    assert q_hat is not None  # Method.adjust checked needs_prior
    return _posthoc_la(logits, cfg, train_counts, None) - log_prior(q_hat).to(logits.device, logits.dtype)


register(Method("posthoc_la", "posthoc", adjust_fn=_posthoc_la, params=("tau", "base_method"),
                doc=_posthoc_la.__doc__ or ""))
register(Method("gla", "posthoc", adjust_fn=_gla, needs_prior=True, params=("tau", "base_method"),
                doc=_gla.__doc__ or ""))
