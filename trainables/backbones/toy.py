"""Family "toy": a timm ViT pre-trained in the toy world (``trainables.world.zoo``), with its
pre-training head as the zero-shot classifier and its known pre-training prior."""

from __future__ import annotations

import numpy as np

from trainables.backbones import BACKBONES
from trainables.backbones.base import Backbone
from trainables.config import BackboneConfig, RuntimeConfig, ToyPretrainConfig, ToyWorldConfig
from trainables.world.render import make_world
from trainables.world.zoo import MEAN, STD, load_or_train


@BACKBONES.register("toy")
def build_toy_backbone(cfg: BackboneConfig, runtime: RuntimeConfig, class_names: list[str],
                       world: ToyWorldConfig | None = None) -> Backbone:
    """The zoo's toy model for (world, cfg.pretrain), trained on first use.

    ``world`` must be the downstream data set's world (``dataset.world``): a toy model only has
    zero-shot weights for the classes of the world it was pre-trained in.
    """
    if world is None:
        raise ValueError("the toy backbone family needs the data set's world: call "
                         "build_backbone(cfg, runtime, class_names, world=dataset.world)")
    if len(class_names) != world.num_classes:
        raise ValueError(f"{len(class_names)} class names for a toy world of {world.num_classes} classes; "
                         f"use dataset.name='toy_lt' with the same dataset.world")
    expected = [make_world(world).class_name(c) for c in range(world.num_classes)]
    if list(class_names) != expected:
        raise ValueError(f"class names {list(class_names)[:3]}... are not the toy world's "
                         f"{expected[:3]}...; a toy backbone only fits dataset 'toy_lt'")
    pre = cfg.pretrain if cfg.pretrain is not None else ToyPretrainConfig()
    entry = load_or_train(world, pre, runtime.zoo_dir)
    model = entry.model
    head = model.head
    weight, bias = head.weight.detach().clone(), head.bias.detach().clone()
    model.reset_classifier(0)  # the encoder now returns pooled, normed features [B, width]
    return Backbone(
        encoder=model,
        feature_dim=int(model.num_features),
        image_size=world.image_size,
        mean=MEAN,
        std=STD,
        blocks=list(model.blocks),
        mlp_norm="norm2",
        zero_shot_weight=weight,
        zero_shot_bias=bias,
        zero_shot_normalize=False,
        true_prior=np.asarray(entry.meta["true_prior"], dtype=np.float64),
        meta={"family": "toy", "name": cfg.name, "zoo_key": entry.key, "zoo_path": str(entry.path),
              "train_seconds": entry.meta["train_seconds"],
              "zero_shot_val_acc": entry.meta["zero_shot_val_acc"], "trained_now": entry.trained},
    )

