"""PEFT kinds train exactly what they claim and start from the frozen model; heads match zero-shot."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from trainables.backbones import build_backbone  # noqa: E402
from trainables.config import BackboneConfig, FinetuneConfig, RuntimeConfig  # noqa: E402
from trainables.heads import CosineHead, build_head  # noqa: E402
from trainables.peft import adapter_bottleneck, apply_peft, count_trainable  # noqa: E402
from tiny_models import TINY_CLIP, TINY_VIT, one_thread  # noqa: E402,F401

NAMES = ["dog", "cat", "sea_lion", "tree"]



def _clip(**kw):
    torch.manual_seed(0)
    return build_backbone(BackboneConfig(family="open_clip", name="ViT-B-16", **kw), RuntimeConfig(), NAMES)


def _vit():
    torch.manual_seed(0)
    return build_backbone(BackboneConfig(family="timm", name="vit_tiny_patch16_224", model_kwargs=TINY_VIT),
                          RuntimeConfig(), NAMES)


def test_adaptformer_on_clip_vit_b16_trains_only_adapters_and_head():
    bb = _clip()
    ft = FinetuneConfig(peft="adaptformer", head="text")
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        before = bb.encoder(x)
    adapters = apply_peft(bb, "adaptformer", len(NAMES), ft)
    head = build_head("text", bb, len(NAMES), ft)
    trainable = {n for n, p in bb.encoder.named_parameters() if p.requires_grad}
    assert trainable and all(".mlp.adapter." in n for n in trainable)
    # per block: own LayerNorm (2 x 768), down 768 x 1 + 1, up 1 x 768 + 768, scale 1
    assert count_trainable(bb.encoder) == count_trainable(adapters) == 12 * (2 * 768 + 768 + 1 + 768 + 768 + 1)
    features = bb.encoder(x)
    torch.testing.assert_close(features, before)  # up-projection starts at zero
    head(features).logsumexp(-1).mean().backward()
    assert all(p.grad is not None for p in adapters.parameters())
    assert head.weight.grad is not None
    assert all(p.grad is None for n, p in bb.encoder.named_parameters() if ".mlp.adapter." not in n)


def test_text_head_is_lifts_text_features_mapped_into_the_image_feature_space():
    bb = _clip(model_kwargs=TINY_CLIP)
    ft = FinetuneConfig(head="text", cosine_scale=25.0)
    head = build_head("text", bb, len(NAMES), ft)
    features = bb.encoder(torch.randn(3, 3, 32, 32)).detach()
    # shijxcs/LIFT trainer.py init_head_text_feat: text_features @ image_encoder.proj.t(), normalised
    w = torch.nn.functional.normalize(bb.zero_shot_weight @ bb.zero_shot_projection.T, dim=-1)
    torch.testing.assert_close(head.weight.detach(), w)
    expected = 25.0 * torch.nn.functional.normalize(features, dim=-1) @ w.T
    torch.testing.assert_close(head(features), expected)


def test_text_head_without_zero_shot_classifier_points_to_cosine():
    with pytest.raises(ValueError, match="use head 'cosine'"):
        build_head("text", _vit(), len(NAMES), FinetuneConfig())


def test_cosine_head_is_scale_times_cosine():
    head = CosineHead(5, 3, scale=10.0)
    f = torch.randn(4, 5)
    expected = 10.0 * torch.nn.functional.cosine_similarity(f[:, None], head.weight[None], dim=-1)
    torch.testing.assert_close(head(f), expected)


@pytest.mark.parametrize("kind, expected", [
    ("linear", lambda n: False),
    ("full", lambda n: True),
    ("bitfit", lambda n: n.endswith("bias")),
    ("lora", lambda n: n.endswith(".A") or n.endswith(".B")),
    ("adaptformer", lambda n: ".mlp.adapter." in n),
])
def test_each_peft_kind_trains_what_it_claims_and_starts_from_the_frozen_model(kind, expected):
    bb = _vit()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        before = bb.encoder(x)
    apply_peft(bb, kind, len(NAMES), FinetuneConfig(lora_rank=2, adapter_dim=8))
    for n, p in bb.encoder.named_parameters():
        assert p.requires_grad == expected(n), n
    with torch.no_grad():
        torch.testing.assert_close(bb.encoder(x), before)


def test_lora_reaches_open_clip_fused_attention_weights():
    bb = _clip(model_kwargs=TINY_CLIP)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = bb.encoder(x)
    deltas = apply_peft(bb, "lora", len(NAMES), FinetuneConfig(lora_rank=2))
    assert len(deltas) == 2 * 2  # in_proj_weight and out_proj.weight in each of 2 blocks
    with torch.no_grad():
        for d in deltas:
            d.B.normal_()
        assert not torch.allclose(bb.encoder(x), before)
    bb.encoder(x).sum().backward()
    assert all(d.A.grad is not None for d in deltas)


def test_adapter_bottleneck_is_lift_default():
    assert adapter_bottleneck(1000, 12) == 32  # ImageNet-LT
    assert adapter_bottleneck(100, 12) == 4  # CIFAR-100-LT
    assert adapter_bottleneck(10, 12) == 1


def test_peft_needing_blocks_on_a_blockless_backbone_names_the_alternatives():
    bb = _vit()
    bb.blocks = []
    with pytest.raises(ValueError, match="use peft linear, full or bitfit"):
        apply_peft(bb, "adaptformer", len(NAMES), FinetuneConfig())
