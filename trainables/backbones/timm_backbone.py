"""timm image models: the pooled pre-logits features are the encoder output."""

from __future__ import annotations

import logging

import timm
import torch
from timm.models import load_state_dict

from trainables.backbones import BACKBONES, resolve_checkpoint
from trainables.backbones.base import Backbone
from trainables.config import BackboneConfig, RuntimeConfig

log = logging.getLogger(__name__)


@BACKBONES.register("timm")
def build_timm(cfg: BackboneConfig, runtime: RuntimeConfig, class_names: list[str]) -> Backbone:
    """A timm model from hub weights (pretrained='true') or a local state dict (.pt/.pth/.bin/.safetensors).

    A checkpoint whose classifier has exactly ``len(class_names)`` outputs keeps it as the zero-shot
    classifier (a model already trained on these classes); any other classifier is dropped.
    """
    checkpoint = resolve_checkpoint(cfg, runtime)
    hub = cfg.pretrained is not None and cfg.pretrained.lower() not in ("false", "none", "")
    if checkpoint is not None and hub:
        raise ValueError(f"backbone {cfg.name!r} sets both pretrained={cfg.pretrained!r} and "
                         f"checkpoint={cfg.checkpoint!r}; keep one")
    model = timm.create_model(cfg.name, pretrained=hub, num_classes=0, **cfg.model_kwargs)
    zs_weight = zs_bias = None
    if checkpoint is not None:
        state = load_state_dict(checkpoint, weights_only=True)
        head = model.pretrained_cfg.get("classifier", "head")
        head = head[0] if isinstance(head, (list, tuple)) else head
        zs_weight, zs_bias = state.pop(f"{head}.weight", None), state.pop(f"{head}.bias", None)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"backbone.checkpoint {checkpoint!r} does not fit timm model {cfg.name!r} "
                             f"(model_kwargs={cfg.model_kwargs}): missing {missing[:5]}, unexpected "
                             f"{unexpected[:5]}; check the model name and model_kwargs")
        if zs_weight is not None and zs_weight.shape[0] != len(class_names):
            log.info("dropping %s's %d-way classifier (downstream has %d classes)",
                     checkpoint, zs_weight.shape[0], len(class_names))
            zs_weight = zs_bias = None
    model.eval()
    pre = model.pretrained_cfg
    size = cfg.model_kwargs.get("img_size", pre.get("input_size", (3, 224, 224))[-1])
    return Backbone(
        encoder=model,
        feature_dim=int(model.num_features),
        image_size=int(size if isinstance(size, int) else size[-1]),
        mean=tuple(float(v) for v in pre.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(float(v) for v in pre.get("std", (0.229, 0.224, 0.225))),
        blocks=list(getattr(model, "blocks", [])),  # CNNs have none: linear/full/bitfit only
        mlp_norm="norm2",
        zero_shot_weight=None if zs_weight is None else zs_weight.float(),
        zero_shot_bias=None if zs_bias is None else zs_bias.float(),
        zero_shot_normalize=False,
        meta={"family": "timm", "name": cfg.name, "weights": checkpoint or ("hub" if hub else "random")},
    )


def save_timm_checkpoint(model: torch.nn.Module, path: str) -> None:
    """Write ``model``'s state dict in timm's formats (.safetensors, else torch.save)."""
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if path.endswith(".safetensors"):
        from safetensors.torch import save_file
        save_file(state, path)
    else:
        torch.save(state, path)
