"""What every backbone builder returns: an image encoder plus what PEFT and heads need."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn


@dataclass
class Backbone:
    """A foundation model prepared for fine-tuning.

    encoder: images [B,3,H,W] (already normalised) -> features [B, feature_dim].
    blocks: the transformer blocks PEFT modules attach to; each has an ``mlp`` sub-module and a
        known attribute name for the norm before it (``mlp_norm``).
    zero_shot_weight/bias: a classifier in feature space for the downstream classes (CLIP: text
        embeddings of the prompts; toy: the pre-training head), used for zero-shot evaluation,
        text-initialised heads and the GLA prior estimate. None when the model has none.
    zero_shot_normalize: True when zero-shot logits are scale * cos(features, weight) (CLIP).
    zero_shot_projection: [feature_dim, D_text] when the encoder's features live before the model's
        image projection (open_clip, as LIFT uses them): zero-shot logits project them first, and a
        text-initialised head maps the text embeddings back, normalize(weight @ projection.T) (LIFT).
    true_prior: the known pre-training label prior (toy models only), for checks.
    """

    encoder: nn.Module
    feature_dim: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    blocks: list[nn.Module]
    mlp_norm: str
    zero_shot_weight: torch.Tensor | None = None
    zero_shot_bias: torch.Tensor | None = None
    zero_shot_normalize: bool = False
    zero_shot_scale: float = 1.0
    zero_shot_projection: torch.Tensor | None = None
    true_prior: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def zero_shot_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Zero-shot logits of features [B, D] -> [B, C]."""
        if self.zero_shot_weight is None:
            raise ValueError("this backbone has no zero-shot classifier")
        w = self.zero_shot_weight.to(features.device, features.dtype)
        if self.zero_shot_projection is not None:
            features = features @ self.zero_shot_projection.to(features.device, features.dtype)
        if self.zero_shot_normalize:
            out = self.zero_shot_scale * nn.functional.normalize(features, dim=-1) @ nn.functional.normalize(w, dim=-1).T
        else:
            out = features @ w.T
        if self.zero_shot_bias is not None:
            out = out + self.zero_shot_bias.to(out.device, out.dtype)
        return out
