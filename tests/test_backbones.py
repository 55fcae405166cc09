"""Backbone builders: open_clip and timm from random weights and from local checkpoints in their real formats."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may touch a model hub

import open_clip  # noqa: E402
import pytest  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from trainables.backbones import build_backbone  # noqa: E402
from trainables.backbones.open_clip_backbone import text_classifier  # noqa: E402
from trainables.backbones.timm_backbone import save_timm_checkpoint  # noqa: E402
from trainables.config import BackboneConfig, RuntimeConfig  # noqa: E402
from tiny_models import TINY_CLIP, TINY_VIT, one_thread  # noqa: E402,F401

NAMES = ["golden_retriever", "tabby cat", "sea lion"]



def test_open_clip_vit_b16_random_weights_with_the_real_tokenizer():
    torch.manual_seed(0)
    bb = build_backbone(BackboneConfig(family="open_clip", name="ViT-B-16"), RuntimeConfig(), NAMES)
    # LIFT's features: width 768 before the image projection; zero-shot logits project to 512
    assert (bb.feature_dim, bb.image_size, len(bb.blocks), bb.mlp_norm) == (768, 224, 12, "ln_2")
    assert bb.zero_shot_projection.shape == (768, 512)
    assert bb.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert bb.zero_shot_weight.shape == (3, 512) and bb.zero_shot_normalize
    assert torch.allclose(bb.zero_shot_weight.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert bb.zero_shot_scale == pytest.approx(1 / 0.07, rel=1e-5)
    # the real BPE tokenizer: different class names give different prompts, and the vocab is CLIP's
    tokens = open_clip.get_tokenizer("ViT-B-16")(["a photo of a golden retriever."])
    assert tokens[0, 0] == 49406 and (tokens[0] == 49407).sum() == 1
    assert not torch.allclose(bb.zero_shot_weight[0], bb.zero_shot_weight[1])


@pytest.mark.parametrize("suffix", [".pt", ".bin"])
def test_open_clip_local_checkpoint_reproduces_the_saved_model(tmp_path, suffix):
    torch.manual_seed(1)
    model = open_clip.create_model("ViT-B-16", **TINY_CLIP).eval()
    path = str(tmp_path / f"tiny_clip{suffix}")
    torch.save(model.state_dict(), path)
    torch.manual_seed(2)  # a different random init, so only the checkpoint can make them equal
    cfg = BackboneConfig(family="open_clip", name="ViT-B-16", checkpoint=path, model_kwargs=TINY_CLIP)
    bb = build_backbone(cfg, RuntimeConfig(), NAMES, prompt_templates=["a photo of a {}.", "art of a {}."])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(bb.encoder(x) @ bb.zero_shot_projection, model.encode_image(x))
        z = model.logit_scale.exp() * F.normalize(model.encode_image(x), dim=-1) @ F.normalize(
            model.encode_text(open_clip.get_tokenizer("ViT-B-16")([f"a photo of a {n}." for n in ["x", "y"]])), dim=-1).T
        bb2 = build_backbone(cfg, RuntimeConfig(), ["x", "y"])
        torch.testing.assert_close(bb2.zero_shot_logits(bb2.encoder(x)), z)  # CLIP's zero-shot logits
        expected = text_classifier(model, open_clip.get_tokenizer("ViT-B-16"), NAMES,
                                   ["a photo of a {}.", "art of a {}."])
    torch.testing.assert_close(bb.zero_shot_weight, expected)
    assert bb.image_size == 32


def _tiny_timm(num_classes: int) -> torch.nn.Module:
    return timm.create_model("vit_tiny_patch16_224", num_classes=num_classes, **TINY_VIT).eval()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_checkpoint_with_a_matching_classifier_keeps_it_as_zero_shot(tmp_path, suffix):
    torch.manual_seed(3)
    model = _tiny_timm(num_classes=len(NAMES))
    path = str(tmp_path / f"vit{suffix}")
    save_timm_checkpoint(model, path)
    cfg = BackboneConfig(family="timm", name="vit_tiny_patch16_224", checkpoint=path, model_kwargs=TINY_VIT)
    bb = build_backbone(cfg, RuntimeConfig(), NAMES)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(bb.zero_shot_logits(bb.encoder(x)), model(x))
    assert (bb.feature_dim, bb.image_size, len(bb.blocks), bb.mlp_norm) == (32, 16, 2, "norm2")


def test_timm_checkpoint_for_other_classes_has_no_zero_shot_classifier(tmp_path):
    torch.manual_seed(4)
    model = _tiny_timm(num_classes=10)
    path = str(tmp_path / "vit10.pth")
    save_timm_checkpoint(model, path)
    bb = build_backbone(BackboneConfig(family="timm", name="vit_tiny_patch16_224", checkpoint=path,
                                       model_kwargs=TINY_VIT), RuntimeConfig(), NAMES)
    assert bb.zero_shot_weight is None
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(bb.encoder(x), model.forward_head(model.forward_features(x), pre_logits=True))


def test_timm_checkpoint_of_another_architecture_is_rejected_with_the_fix(tmp_path):
    path = str(tmp_path / "vit.pth")
    save_timm_checkpoint(_tiny_timm(0), path)
    cfg = BackboneConfig(family="timm", name="vit_tiny_patch16_224", checkpoint=path,
                         model_kwargs=dict(TINY_VIT, depth=3))
    with pytest.raises(ValueError, match="model_kwargs"):
        build_backbone(cfg, RuntimeConfig(), NAMES)


def test_missing_checkpoint_names_the_field_and_the_zoo_dir(tmp_path):
    cfg = BackboneConfig(family="timm", name="vit_tiny_patch16_224", checkpoint="nope.pth")
    with pytest.raises(FileNotFoundError, match="backbone.checkpoint 'nope.pth'.*zoo_dir"):
        build_backbone(cfg, RuntimeConfig(zoo_dir=str(tmp_path)), NAMES)


def test_checkpoint_is_also_found_relative_to_the_zoo_dir(tmp_path):
    save_timm_checkpoint(_tiny_timm(0), str(tmp_path / "rel.pth"))
    cfg = BackboneConfig(family="timm", name="vit_tiny_patch16_224", checkpoint="rel.pth", model_kwargs=TINY_VIT)
    assert build_backbone(cfg, RuntimeConfig(zoo_dir=str(tmp_path)), NAMES).feature_dim == 32
