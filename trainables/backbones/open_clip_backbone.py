"""open_clip models: the image tower is the encoder, the text tower gives the zero-shot classifier."""

from __future__ import annotations

import open_clip
import torch
from torch import nn

from trainables.backbones import BACKBONES, resolve_checkpoint
from trainables.backbones.base import Backbone
from trainables.config import BackboneConfig, RuntimeConfig
from trainables.errors import ConfigurationError

_TEXT_BATCH = 256  # prompts encoded at once; bounds memory for 1000+ classes x templates


@BACKBONES.register("open_clip")
def build_open_clip(cfg: BackboneConfig, runtime: RuntimeConfig, class_names: list[str],
                    prompt_templates: tuple[str, ...] = ("a photo of a {}.",)) -> Backbone:
    """An open_clip model from a pretrained tag or a local state-dict file, text tower used once."""
    checkpoint = resolve_checkpoint(cfg, runtime)
    if checkpoint is not None and cfg.pretrained is not None:
        raise ValueError(f"backbone {cfg.name!r} sets both pretrained={cfg.pretrained!r} and "
                         f"checkpoint={cfg.checkpoint!r}; keep one")
    if cfg.name not in open_clip.list_models():
        raise ConfigurationError(f"backbone.name {cfg.name!r}: open_clip has no model of this name "
                                 f"(open_clip.list_models() lists them)")
    if checkpoint is None and cfg.pretrained is not None and cfg.pretrained.lower() not in [
            t.lower() for t in open_clip.list_pretrained_tags_by_model(cfg.name)]:
        raise ConfigurationError(f"backbone.pretrained {cfg.pretrained!r}: open_clip has no such tag for "
                                 f"{cfg.name!r} (its tags: {', '.join(open_clip.list_pretrained_tags_by_model(cfg.name))})")
    model = open_clip.create_model(cfg.name, pretrained=checkpoint or cfg.pretrained, **cfg.model_kwargs)
    model.eval()
    zero_shot = text_classifier(model, open_clip.get_tokenizer(cfg.name), class_names, prompt_templates)
    visual = model.visual
    # LIFT's image features: the pooled token after ln_post, before the image projection (its
    # Peft_ViT skips ``x @ proj``); zero-shot logits apply the projection (Backbone.zero_shot_logits).
    projection = None
    if getattr(visual, "proj", None) is not None:
        projection = visual.proj.detach().clone()
        visual.proj = None
    pre = open_clip.get_model_preprocess_cfg(model)
    size = pre["size"]
    return Backbone(
        encoder=visual,
        feature_dim=int(projection.shape[0]) if projection is not None else int(visual.output_dim),
        image_size=int(size if isinstance(size, int) else size[0]),
        mean=tuple(float(v) for v in pre["mean"]),
        std=tuple(float(v) for v in pre["std"]),
        blocks=list(visual.transformer.resblocks),
        mlp_norm="ln_2",
        zero_shot_weight=zero_shot,
        zero_shot_normalize=True,
        zero_shot_scale=float(model.logit_scale.detach().exp()),
        zero_shot_projection=projection,
        meta={"family": "open_clip", "name": cfg.name, "weights": checkpoint or cfg.pretrained or "random"},
    )


@torch.no_grad()
def text_classifier(model: nn.Module, tokenizer, class_names: list[str],
                    templates: tuple[str, ...] | list[str]) -> torch.Tensor:
    """[C, D] class embeddings: mean over templates of normalised text embeddings, renormalised (CLIP)."""
    if not templates:
        raise ValueError("finetune.prompt_templates is empty; give at least one, e.g. 'a photo of a {}.'")
    prompts = [t.format(name.replace("_", " ")) for name in class_names for t in templates]
    chunks = [model.encode_text(tokenizer(prompts[i:i + _TEXT_BATCH]))
              for i in range(0, len(prompts), _TEXT_BATCH)]
    emb = nn.functional.normalize(torch.cat(chunks).float(), dim=-1)
    emb = emb.view(len(class_names), len(templates), -1).mean(dim=1)
    return nn.functional.normalize(emb, dim=-1)
