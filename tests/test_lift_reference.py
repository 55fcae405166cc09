"""LIFT's modules, exactly: AdaptFormer in a CLIP ViT block, the cosine classifier and the LDAM loss
with one shared scale, each compared with a port of the reference lines on the same weights.

Reference: shijxcs/LIFT at commit 661ead9b78368f05ba79abe4672d63154467f823 (MIT licence).
The ``_lift_*`` functions below port a few lines of its files (named at each); they exist only to
check our own modules against them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from torch import nn

from trainables.backbones.base import Backbone
from trainables.config import FinetuneConfig, method_config
from trainables.heads import CosineHead
from trainables.methods import get_method
from trainables.peft import AdaptFormer, apply_peft
from tiny_models import one_thread  # noqa: F401

WIDTH, HEADS, BOTTLENECK = 32, 4, 8


class _LiftAdaptFormer(nn.Module):
    """Port of LIFT models/peft_modules.py ``class AdaptFormer`` (lines 54-79)."""

    def __init__(self, in_dim, bottle_dim):
        super().__init__()
        self.ln = nn.LayerNorm(in_dim)
        self.down_proj = nn.Linear(in_dim, bottle_dim)
        self.relu = nn.ReLU(inplace=True)
        self.up_proj = nn.Linear(bottle_dim, in_dim)
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        x = self.ln(x)
        x = self.down_proj(x)
        x = self.relu(x)
        x = self.up_proj(x)
        x = x * self.scale
        return x


def _lift_clip_block(block: ResidualAttentionBlock, adaptformer: _LiftAdaptFormer, x: torch.Tensor) -> torch.Tensor:
    """Port of LIFT models/peft_vit.py ``Peft_ViT.forward``, one CLIP-ViT block without the other
    PEFT branches (attention lines 365-408, feed-forward lines 413-453); x is [N, L, D]."""
    x = x.permute(1, 0, 2)  # NLD -> LND
    _bsz, _emb_dim = x.shape[1], x.shape[2]
    _attn, _ln_1, _mlp, _ln_2 = block.attn, block.ln_1, block.mlp, block.ln_2
    _num_heads = _attn.num_heads
    _head_dim = _emb_dim // _num_heads
    identity = x
    x = _ln_1(x)
    qkv = F.linear(x, _attn.in_proj_weight, _attn.in_proj_bias)
    q, k, v = qkv.chunk(3, dim=-1)
    q = q.contiguous().view(q.shape[0], q.shape[1] * _num_heads, _head_dim).transpose(0, 1)
    k = k.contiguous().view(k.shape[0], k.shape[1] * _num_heads, _head_dim).transpose(0, 1)
    v = v.contiguous().view(v.shape[0], v.shape[1] * _num_heads, _head_dim).transpose(0, 1)
    x = F.scaled_dot_product_attention(q, k, v)
    x = x.transpose(0, 1).contiguous().view(-1, _emb_dim)
    x = F.linear(x, _attn.out_proj.weight, _attn.out_proj.bias)
    x = x.view(-1, _bsz, _emb_dim)
    x = x + identity
    identity = x
    x = _ln_2(x)
    x = F.linear(x, _mlp[0].weight, _mlp[0].bias)
    x = _mlp[1](x)
    x = F.linear(x, _mlp[2].weight, _mlp[2].bias)
    x = x + adaptformer(identity)
    x = x + identity
    return x.permute(1, 0, 2)


def _lift_cosine_classifier(weight: torch.Tensor, x: torch.Tensor, scale: float) -> torch.Tensor:
    """Port of LIFT models/classifiers.py ``CosineClassifier.forward`` (lines 38-41 of the class at line 33)."""
    x = F.normalize(x, dim=-1)
    weight = F.normalize(weight, dim=-1)
    return F.linear(x, weight) * scale


def _lift_ldam(cls_num_list: torch.Tensor, logit: torch.Tensor, target: torch.Tensor,
               max_m: float = 0.5, s: float = 25.0, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Port of LIFT utils/losses.py ``LDAMLoss`` (lines 25-44; CPU tensors instead of
    torch.cuda.FloatTensor). LIFT's trainer passes s=cfg.scale, the cosine classifier's scale 25
    (utils/config.py line 30). ``weight`` is the deferred re-weighting of kaidic/LDAM-DRW
    at 2536330 (cifar_train.py lines 199-206: per_cls_weights into F.cross_entropy), absent from LIFT."""
    m_list = 1.0 / torch.sqrt(torch.sqrt(cls_num_list))
    m_list = m_list * (max_m / torch.max(m_list))
    index = torch.zeros_like(logit, dtype=torch.uint8)
    index.scatter_(1, target.data.view(-1, 1), 1)
    index_float = index.type(torch.FloatTensor)
    batch_m = torch.matmul(m_list[None, :], index_float.transpose(0, 1))
    batch_m = batch_m.view((-1, 1))
    logit_m = logit - batch_m * s
    output = torch.where(index.bool(), logit_m, logit)
    return F.cross_entropy(output, target, weight=weight)


def _randomise(module: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (1.0 if p.ndim == 1 and p.numel() == 1 else 0.0))


def _one_block_backbone(block: nn.Module) -> Backbone:
    return Backbone(encoder=nn.Sequential(block), feature_dim=WIDTH, image_size=32, mean=(0.5,) * 3,
                    std=(0.5,) * 3, blocks=[block], mlp_norm="ln_2")


def test_adaptformer_module_equals_lift_with_the_same_weights():
    ours, ref = AdaptFormer(WIDTH, BOTTLENECK), _LiftAdaptFormer(WIDTH, BOTTLENECK)
    _randomise(ours, 1)
    ref.load_state_dict(ours.state_dict())  # same parameter names: LIFT's weights load as they are
    x = torch.randn(3, 5, WIDTH)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)


def test_adaptformer_starts_as_lift_does():
    torch.manual_seed(0)
    a = AdaptFormer(WIDTH, BOTTLENECK)
    assert a.scale.item() == 1.0 and a.scale.requires_grad
    assert (a.up_proj.weight == 0).all() and (a.up_proj.bias == 0).all() and (a.down_proj.bias == 0).all()
    # kaiming_normal_(a=sqrt(5)), fan_in: std = sqrt(2 / (1 + 5)) / sqrt(fan_in)
    assert a.down_proj.weight.std().item() == pytest.approx(math.sqrt(1 / 3) / math.sqrt(WIDTH), rel=0.15)
    assert torch.equal(a.ln.weight, torch.ones(WIDTH)) and torch.equal(a.ln.bias, torch.zeros(WIDTH))


def test_adaptformer_in_an_open_clip_block_equals_lifts_block():
    torch.manual_seed(0)
    block = ResidualAttentionBlock(WIDTH, HEADS, batch_first=True)
    _randomise(block, 2)
    reference_block = ResidualAttentionBlock(WIDTH, HEADS, batch_first=True)
    reference_block.load_state_dict(block.state_dict())
    backbone = _one_block_backbone(block)
    (adapter,) = apply_peft(backbone, "adaptformer", 10, FinetuneConfig(adapter_dim=BOTTLENECK))
    _randomise(adapter, 3)
    lift_adapter = _LiftAdaptFormer(WIDTH, BOTTLENECK)
    lift_adapter.load_state_dict(adapter.state_dict())
    x = torch.randn(2, 7, WIDTH)
    with torch.no_grad():
        ours, ref = block(x), _lift_clip_block(reference_block, lift_adapter, x)
    # float32 attention kernels differ in the last bits only (largest difference seen: 7.6e-6)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=2e-5)
    # the branch matters: without it the outputs differ by far more than the tolerance
    with torch.no_grad():
        assert (reference_block(x) - ours).abs().max().item() > 1e-2


def test_cosine_head_equals_lifts_cosine_classifier():
    head = CosineHead(WIDTH, 10, scale=25.0)
    x = torch.randn(6, WIDTH)
    # float32 rounding only (scale applied before vs after the product): |diff| ~ 1e-6 on logits ~ 25
    torch.testing.assert_close(head(x), _lift_cosine_classifier(head.weight, x, 25.0), rtol=0, atol=1e-5)


@pytest.mark.parametrize("epoch,drw", [(0, False), (8, True)])
def test_ldam_drw_equals_lifts_ldam_with_the_cosine_scale(epoch, drw):
    counts = np.array([500, 200, 80, 30, 10, 4])
    torch.manual_seed(0)
    logits = 25.0 * F.normalize(torch.randn(32, 6), dim=-1)  # a cosine head's logits
    y = torch.randint(0, 6, (32,))
    cfg = method_config(name="ldam_drw", ldam_max_margin=0.5, beta=0.9999, drw_epoch_frac=0.8)
    loss = get_method("ldam_drw").make_loss(cfg, counts, 10, None, logit_scale=25.0)(logits, y, epoch)
    weight = None
    if drw:  # kaidic/LDAM-DRW cifar_train.py lines 203-205: effective-number weights normalised to sum C
        w = (1 - 0.9999) / (1 - np.power(0.9999, counts))
        weight = torch.tensor(w / w.sum() * len(counts), dtype=torch.float32)
    ref = _lift_ldam(torch.tensor(counts, dtype=torch.float32), logits, y, max_m=0.5, s=25.0, weight=weight)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)


def test_ldam_scale_is_the_heads_scale_and_ldam_scale_is_gone():
    assert "ldam_scale" not in get_method("ldam_drw").config.model_fields
    counts = np.array([100, 10])
    logits, y = torch.tensor([[5.0, 1.0]]), torch.tensor([0])
    a = get_method("ldam_drw").make_loss(method_config(name="ldam_drw"), counts, 10, None, logit_scale=25.0)
    b = get_method("ldam_drw").make_loss(method_config(name="ldam_drw"), counts, 10, None, logit_scale=30.0)
    # effective maximum margin = scale * max_margin on the logit scale: 25 * m vs 30 * m
    assert a(logits, y, 0).item() < b(logits, y, 0).item()


def _lift_peft_vit_forward(visual, adaptformers, x: torch.Tensor) -> torch.Tensor:
    """Port of LIFT models/peft_vit.py ``Peft_ViT.forward`` for a CLIP ViT (lines 286-293 and
    457-458): embeddings, ln_pre, the blocks, then ln_post of the class token, without ``proj``."""
    x = visual.conv1(x)
    x = x.reshape(x.shape[0], x.shape[1], -1)
    x = x.permute(0, 2, 1)
    x = torch.cat([visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1), x], dim=1)
    x = x + visual.positional_embedding.to(x.dtype)
    x = visual.ln_pre(x)
    for block, adaptformer in zip(visual.transformer.resblocks, adaptformers):
        x = _lift_clip_block(block, adaptformer, x)
    x = x[:, 0, :]
    return visual.ln_post(x)


def test_open_clip_encoder_with_adaptformer_equals_lifts_peft_vit_and_text_head_init():
    import copy

    from tiny_models import TINY_CLIP
    from trainables.backbones import build_backbone
    from trainables.config import BackboneConfig, RuntimeConfig
    from trainables.heads import build_head

    torch.manual_seed(0)
    names = ["dog", "cat", "sea lion"]
    bb = build_backbone(BackboneConfig(family="open_clip", name="ViT-B-16", model_kwargs=TINY_CLIP),
                        RuntimeConfig(), names)
    reference = copy.deepcopy(bb.encoder)  # the frozen image tower before PEFT, proj removed
    adapters = apply_peft(bb, "adaptformer", len(names), FinetuneConfig(adapter_dim=4))
    lift_adapters = []
    for i, a in enumerate(adapters):
        _randomise(a, 10 + i)
        la = _LiftAdaptFormer(32, 4)
        la.load_state_dict(a.state_dict())
        lift_adapters.append(la)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = bb.encoder(x)
        ref = _lift_peft_vit_forward(reference, lift_adapters, x)
    assert ours.shape == (2, 32) and (ours - ref).abs().max().item() < 1e-5
    # LIFT's init_head_text_feat (trainer.py lines 313-353): text features @ proj.t(), normalised,
    # into a CosineClassifier of scale 25
    head = build_head("text", bb, len(names), FinetuneConfig(head="text", cosine_scale=25.0))
    text = F.normalize(bb.zero_shot_weight, dim=-1)  # one template: the normalised text features
    lift_weight = F.normalize(text @ bb.zero_shot_projection.t(), dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(head(ours), _lift_cosine_classifier(lift_weight, ours, 25.0), rtol=0, atol=1e-5)
