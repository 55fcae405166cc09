"""Classifier heads on encoder features: linear, cosine, and cosine initialised from the zero-shot
classifier (for open_clip: the text embeddings mapped into the image feature space, LIFT's
``init_head_text_feat``: normalize(text @ proj.T))."""

from __future__ import annotations

import math

import torch
from torch import nn

from trainables.backbones.base import Backbone
from trainables.config import FinetuneConfig


class CosineHead(nn.Module):
    """logits = scale * cos(features, W_c) for every class c (LIFT's classifier)."""

    def __init__(self, dim: int, num_classes: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        self.scale = scale
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random init, as nn.Linear's weight."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        f = nn.functional.normalize(features, dim=-1)
        w = nn.functional.normalize(self.weight, dim=-1)
        return self.scale * f @ w.to(f.dtype).T


def build_head(kind: str, backbone: Backbone, num_classes: int, cfg: FinetuneConfig) -> nn.Module:
    """A fresh head of ``kind`` (linear | cosine | text) mapping backbone features to ``num_classes`` logits."""
    if kind == "linear":
        return nn.Linear(backbone.feature_dim, num_classes)
    if kind == "cosine":
        return CosineHead(backbone.feature_dim, num_classes, cfg.cosine_scale)
    if kind == "text":
        w = backbone.zero_shot_weight
        if w is None:
            raise ValueError(f"finetune.head='text' needs a zero-shot classifier, and backbone "
                             f"{backbone.meta.get('name', '?')!r} has none; use head 'cosine' or 'linear'")
        if backbone.zero_shot_projection is not None:  # LIFT: text features @ proj.T, normalised
            w = nn.functional.normalize(w.float() @ backbone.zero_shot_projection.float().T, dim=-1)
        if tuple(w.shape) != (num_classes, backbone.feature_dim):
            raise ValueError(f"zero-shot classifier has shape {tuple(w.shape)}, expected "
                             f"({num_classes}, {backbone.feature_dim}); the backbone was built for other classes")
        head = CosineHead(backbone.feature_dim, num_classes, cfg.cosine_scale)
        with torch.no_grad():
            head.weight.copy_(w.float())
        return head
    raise ValueError(f"unknown finetune.head {kind!r}; use linear, cosine or text")
