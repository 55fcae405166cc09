"""Parameter-efficient fine-tuning: which backbone weights train, and what small modules are added.

``apply_peft`` freezes the encoder, then lets one registered kind unfreeze weights or insert modules.
Inserted modules live inside the encoder (so ``encoder(x)`` runs them) and are also returned in a
ModuleList, so the caller can count them. Every kind starts from exactly the pre-trained function.
"""

from __future__ import annotations

import logging
import math
from typing import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

from trainables.backbones.base import Backbone
from trainables.config import FinetuneConfig
from trainables.registry import Registry

log = logging.getLogger(__name__)

PeftFn = Callable[[Backbone, int, FinetuneConfig], nn.Module]
PEFTS: Registry[PeftFn] = Registry("peft kind")

LORA_ALPHA_OVER_RANK = 1.0  # the LoRA update is scaled by alpha / r; alpha = r keeps it rank-free


def apply_peft(backbone: Backbone, kind: str, num_classes: int, cfg: FinetuneConfig) -> nn.Module:
    """Freeze ``backbone.encoder``, apply PEFT ``kind`` in place, return the added trainable modules."""
    backbone.encoder.requires_grad_(False)
    extras = PEFTS.get(kind)(backbone, num_classes, cfg)
    log.info("peft %s: %d trainable encoder parameters", kind, count_trainable(backbone.encoder))
    return extras


def count_trainable(module: nn.Module) -> int:
    """Number of parameters of ``module`` that require grad."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@PEFTS.register("linear")
def _linear(backbone: Backbone, num_classes: int, cfg: FinetuneConfig) -> nn.Module:
    return nn.ModuleList()


@PEFTS.register("full")
def _full(backbone: Backbone, num_classes: int, cfg: FinetuneConfig) -> nn.Module:
    backbone.encoder.requires_grad_(True)
    return nn.ModuleList()


@PEFTS.register("bitfit")
def _bitfit(backbone: Backbone, num_classes: int, cfg: FinetuneConfig) -> nn.Module:
    for name, p in backbone.encoder.named_parameters():
        if name.endswith("bias"):
            p.requires_grad_(True)
    return nn.ModuleList()


class AdaptFormer(nn.Module):
    """LIFT's AdaptFormer branch: scale * up(relu(down(LayerNorm(x)))) with its own LayerNorm, a
    learnable scalar scale that starts at 1, down kaiming-normal, up and both biases zero (so the
    adapted model starts as the frozen one). Parameter names follow LIFT's module (shijxcs/LIFT
    ``models/peft_modules.py``), so its weights load as they are."""

    def __init__(self, dim: int, bottleneck: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.down_proj = nn.Linear(dim, bottleneck)
        self.up_proj = nn.Linear(bottleneck, dim)
        self.scale = nn.Parameter(torch.ones(1))
        nn.init.kaiming_normal_(self.down_proj.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up_proj.weight)
        nn.init.zeros_(self.down_proj.bias)
        nn.init.zeros_(self.up_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up_proj(nn.functional.relu(self.down_proj(self.ln(x)))) * self.scale


class MlpWithAdaptFormer(nn.Module):
    """A block's normalised MLP with AdaptFormer beside it, both reading the residual stream x:
    ``mlp(norm(x)) + adapter(x)``. It replaces ``block.mlp`` while the block's own norm becomes an
    identity, so the block computes x + mlp(norm(x)) + adapter(x), LIFT's feed-forward step
    (``models/peft_vit.py``: ``x = mlp(ln_2(identity)); x = x + adaptformer(identity); x = x + identity``).
    """

    def __init__(self, norm: nn.Module, mlp: nn.Module, adapter: AdaptFormer) -> None:
        super().__init__()
        self.norm = norm
        self.mlp = mlp
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm(x)) + self.adapter(x)


def adapter_bottleneck(num_classes: int, num_blocks: int) -> int:
    """LIFT's default bottleneck: 2**floor(log2(C / (2 * blocks))), i.e. about C/24 for 12 blocks."""
    return 2 ** max(0, int(math.log2(max(1.0, num_classes / (2 * max(1, num_blocks))))))


@PEFTS.register("adaptformer")
def _adaptformer(backbone: Backbone, num_classes: int, cfg: FinetuneConfig) -> nn.Module:
    blocks = _require_blocks(backbone, "adaptformer")
    dim = cfg.adapter_dim or adapter_bottleneck(num_classes, len(blocks))
    adapters = nn.ModuleList()
    for i, block in enumerate(blocks):
        norm = getattr(block, backbone.mlp_norm, None)
        if norm is None:
            raise ValueError(f"adaptformer: block {i} ({type(block).__name__}) has no norm "
                             f"{backbone.mlp_norm!r} before its MLP; use peft lora, bitfit or full")
        for name in ("ls_2", "ls2"):  # a layer scale would scale the adapter too (not LIFT's block)
            ls = getattr(block, name, None)
            if ls is not None and not isinstance(ls, nn.Identity):
                raise ValueError(f"adaptformer: block {i} has a layer scale ({name}); LIFT's AdaptFormer "
                                 f"is defined for blocks without one; use peft lora, bitfit or full")
        adapter = AdaptFormer(_block_width(block), dim)
        block.mlp = MlpWithAdaptFormer(norm, block.mlp, adapter)
        setattr(block, backbone.mlp_norm, nn.Identity())
        adapters.append(adapter)
    return adapters


class LoraDelta(nn.Module):
    """A weight parametrization W -> W + (alpha/r) * B @ A, with B zero-initialised."""

    def __init__(self, out_features: int, in_features: int, rank: int) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, in_features))
        self.B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.scale = LORA_ALPHA_OVER_RANK

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.scale * (self.B @ self.A).to(weight.dtype)


@PEFTS.register("lora")
def _lora(backbone: Backbone, num_classes: int, cfg: FinetuneConfig) -> nn.Module:
    # A parametrization rather than a wrapper module, because nn.MultiheadAttention (open_clip)
    # reads its fused in_proj_weight directly; the same code then serves timm's qkv/proj Linears.
    deltas = nn.ModuleList()
    for i, block in enumerate(_require_blocks(backbone, "lora")):
        attn = getattr(block, "attn", None)
        if attn is None:
            raise ValueError(f"lora: block {i} ({type(block).__name__}) has no 'attn' module; "
                             f"use peft adaptformer, bitfit or full for this backbone")
        targets = [(m, "weight") for m in attn.modules() if isinstance(m, nn.Linear)]
        targets += [(m, "in_proj_weight") for m in attn.modules()
                    if isinstance(m, nn.MultiheadAttention) and m.in_proj_weight is not None]
        for module, name in targets:
            out_f, in_f = getattr(module, name).shape
            delta = LoraDelta(out_f, in_f, cfg.lora_rank)
            parametrize.register_parametrization(module, name, delta)
            deltas.append(delta)
    return deltas


def _require_blocks(backbone: Backbone, kind: str) -> list[nn.Module]:
    if not backbone.blocks:
        raise ValueError(f"peft {kind!r} needs transformer blocks, and backbone "
                         f"{backbone.meta.get('name', '?')!r} has none; use peft linear, full or bitfit")
    return backbone.blocks


def _block_width(block: nn.Module) -> int:
    """Input width of a block's MLP (its first Linear's in_features)."""
    for m in block.mlp.modules():
        if isinstance(m, nn.Linear):
            return m.in_features
    raise ValueError(f"cannot find the width of {type(block).__name__}.mlp (no nn.Linear inside)")
