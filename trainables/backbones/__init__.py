"""Backbone families: ``build_backbone(cfg, runtime, class_names) -> Backbone``.

Each family lives in its own module that registers a builder in ``BACKBONES`` under the family
name (``@BACKBONES.register("timm")``). Modules are imported lazily on first use so that a toy run
never pays for importing open_clip, and a missing optional package only fails the family using it.
"""

from __future__ import annotations

import importlib
import inspect
import os
from typing import Callable, Sequence

from trainables.backbones.base import Backbone
from trainables.config import BACKBONE_FAMILIES, BackboneConfig, RuntimeConfig, ToyWorldConfig
from trainables.registry import Registry

BackboneBuilder = Callable[[BackboneConfig, RuntimeConfig, list[str]], Backbone]
BACKBONES: Registry[BackboneBuilder] = Registry("backbone family")


def build_backbone(cfg: BackboneConfig, runtime: RuntimeConfig, class_names: list[str],
                   prompt_templates: Sequence[str] = ("a photo of a {}.",),
                   world: ToyWorldConfig | None = None) -> Backbone:
    """Build the backbone ``cfg`` describes, with a zero-shot classifier for ``class_names`` if it has one.

    ``prompt_templates`` (text-tower families) and ``world`` (the toy family: the data set's world)
    reach only the builders whose signature names them; the others keep the three-argument contract.
    """
    if cfg.family not in BACKBONES and cfg.family in BACKBONE_FAMILIES:
        importlib.import_module(BACKBONE_FAMILIES[cfg.family])  # registers the family's builder
    builder = BACKBONES.get(cfg.family)
    accepted = inspect.signature(builder).parameters
    extra = {k: v for k, v in (("prompt_templates", tuple(prompt_templates)), ("world", world))
             if k in accepted and v is not None}
    return builder(cfg, runtime, class_names, **extra)


def resolve_checkpoint(cfg: BackboneConfig, runtime: RuntimeConfig) -> str | None:
    """The local checkpoint file of ``cfg`` (as given, or relative to runtime.zoo_dir), or None."""
    if cfg.checkpoint is None:
        return None
    for path in (cfg.checkpoint, os.path.join(runtime.zoo_dir, cfg.checkpoint)):
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"backbone.checkpoint {cfg.checkpoint!r} is not a file (also looked in runtime.zoo_dir="
        f"{runtime.zoo_dir!r}); give an existing path or remove 'checkpoint'")


__all__ = ["BACKBONES", "Backbone", "build_backbone", "resolve_checkpoint"]
