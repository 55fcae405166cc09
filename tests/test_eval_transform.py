"""LIFT's evaluation transform and test-time crops (shijxcs/LIFT trainer.py at 661ead9: test
transform Resize(res * 8 // 7) + CenterCrop(res); tte Resize(res + expand) + FiveCrop / TenCrop,
logits averaged over the crops)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset
from torchvision.transforms.v2 import functional as TF

from trainables import loop
from trainables.backbones.base import Backbone
from trainables.config import FinetuneConfig
from trainables.data.base import LabeledImages
from tiny_models import one_thread  # noqa: F401

SIZE = 32


def _backbone() -> Backbone:
    return Backbone(encoder=nn.Identity(), feature_dim=3, image_size=SIZE, mean=(0.5,) * 3, std=(0.5,) * 3,
                    blocks=[], mlp_norm="norm2")


def _image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (3, h, w), dtype=np.uint8))


def test_lift_eval_transform_resizes_to_8_7_of_the_resolution_then_center_crops():
    img = _image(40, 60)
    _, lift = loop.make_transforms(_backbone(), augment=False, eval_transform="lift")
    expected = TF.center_crop(TF.resize(img, SIZE * 8 // 7, antialias=True), SIZE)
    assert torch.equal(lift(img), expected) and lift(img).shape == (3, SIZE, SIZE)
    # an image already at the resolution: center passes it through, lift zooms in by 8/7
    sq = _image(SIZE, SIZE, 1)
    _, center = loop.make_transforms(_backbone(), augment=False, eval_transform="center")
    assert torch.equal(center(sq), sq) and not torch.equal(lift(sq), sq)


@pytest.mark.parametrize("crops", [5, 10])
def test_test_crops_are_lifts_five_or_ten_crops_of_the_expanded_image(crops):
    img = _image(50, 70)
    tf = loop.make_test_transform(_backbone(), FinetuneConfig(test_crops=crops, crop_expand=8))
    out = tf(img)
    assert out.shape == (crops, 3, SIZE, SIZE) and out.dtype == torch.uint8
    resized = TF.resize(img, SIZE + 8, antialias=True)
    assert torch.equal(out[0], resized[:, :SIZE, :SIZE])  # FiveCrop's first crop: top-left
    assert torch.equal(out[4], TF.center_crop(resized, SIZE))
    if crops == 10:
        assert torch.equal(out[5], TF.horizontal_flip(resized)[:, :SIZE, :SIZE])


def test_predict_averages_the_logits_of_the_crops():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    crops = torch.rand(6, 5, 3, 4, 4)
    logits, labels = loop.predict(model, TensorDataset(crops, torch.arange(6)), batch_size=4, device=torch.device("cpu"))
    expected = torch.stack([model(c).mean(0) for c in crops]).detach().numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-6, atol=1e-6)
    assert labels.tolist() == list(range(6))


def test_encode_keeps_one_feature_row_per_crop_and_zero_shot_logits_average_them():
    data = LabeledImages(np.zeros(3, dtype=np.int64), lambda i: torch.full((4, 3, 2, 2), float(i)))
    feats = loop.encode(nn.Flatten(), data, batch_size=2, device=torch.device("cpu"))
    assert feats.shape == (3, 4, 12)
    assert loop.mean_over_crops(feats).shape == (3, 12)
