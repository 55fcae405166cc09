"""Tiny real architectures the model tests share (random weights, built in well under a second)."""

from __future__ import annotations

import pytest
import torch

TINY_CLIP = dict(embed_dim=32, vision_cfg=dict(image_size=32, layers=2, width=32, patch_size=8, head_width=16),
                 text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))
TINY_VIT = dict(img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=2)


@pytest.fixture(autouse=True)
def one_thread() -> None:
    """Model tests run on one thread: results do not depend on the machine's cores."""
    torch.set_num_threads(1)
