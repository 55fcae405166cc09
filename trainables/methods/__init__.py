"""Long-tail methods: each a ``Method`` registered by name in ``METHODS``.

Interface
---------
``Method(name, kind, ...)`` with ``kind`` one of

- ``"train"``: a training loss. ``method.make_loss(cfg, train_counts, epochs, q_hat, logit_scale) -> LossFn``
  (``logit_scale``: the scale the head's logits already carry, the cosine head's; LDAM's margins use it) and
  ``loss_fn(logits [B, C], labels [B], epoch) -> scalar tensor`` (``epoch`` counts from 0; only
  schedules such as LDAM-DRW use it). The loss is computed in float32 whatever the logits' dtype.
  ``two_phase=True`` (cRT) tells the loop to run stage A with this loss and then retrain the head on
  frozen features with class-balanced sampling for ``cfg.crt_epochs`` epochs, with the same loss.
  Methods: ce, focal, cb, ldam_drw, bs, la, gla_train, crt (``losses.py``).
- ``"posthoc"``: a correction of a trained model's logits.
  ``method.adjust(logits, cfg, train_counts, q_hat, zeroshot) -> logits`` (numpy in, numpy out; torch
  in, torch out). The logits come from a stage-1 run of ``cfg.base_method``; ``zeroshot`` are the
  backbone's calibrated zero-shot logits of the same examples (z_zs / T, from the stage-1 cache),
  which ``needs_zeroshot`` methods (gla) add. Methods: posthoc_la, posthoc_prior, gla (``posthoc.py``).
- ``"ensemble"``: combines several stage-1 runs (``backdoor``, registered by
  ``trainables/methods/backdoor.py``, which this package imports when the file exists). Its
  interface is that module's own; ``make_loss`` / ``adjust`` are not used.

``config`` is the method's own pydantic model (a ``trainables.config.MethodConfig`` subclass with
``name: Literal["<name>"]`` and its hyper-parameters, declared next to its loss or adjustment);
``Method.params`` are its fields besides ``name``, exactly what enters the stage-1 cache key and the
trial's MLflow params. ``cfg`` below is an instance of it.

``needs_prior=True`` (gla, gla_train) means the caller must pass ``q_hat``, the backbone's estimated
pre-training prior (``trainables.prior.estimate_prior``). ``train_counts`` are the downstream
training images per class; p_s = train_counts / sum(train_counts), with a class that has no
training image counted as one so that log p_s stays finite.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal, Protocol

import numpy as np
from pydantic import create_model

from trainables.config import MethodConfig
from trainables.registry import Registry


class LazyModule:
    """A module imported on first attribute access: the method modules hold their configs, which the
    study spec validates before any heavy import (tests/test_bad_input.py), so torch loads on first use."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)


if TYPE_CHECKING:
    import torch
else:
    torch = LazyModule("torch")

ArrayLike = "np.ndarray | torch.Tensor"


class LossFn(Protocol):
    """A training loss: ``(logits [B, C], labels [B], epoch) -> scalar tensor``."""

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, epoch: int) -> torch.Tensor: ...


LossFactory = Callable[[MethodConfig, np.ndarray, int, "np.ndarray | None", float], LossFn]
AdjustFn = Callable[["torch.Tensor", MethodConfig, np.ndarray, "np.ndarray | None", "torch.Tensor | None"],
                    "torch.Tensor"]


@dataclass(frozen=True)
class Method:
    """A registered long-tail method (see the module docstring for the interface)."""

    name: str
    kind: Literal["train", "posthoc", "ensemble"]
    loss_factory: LossFactory | None = None
    adjust_fn: AdjustFn | None = None
    two_phase: bool = False
    needs_prior: bool = False
    needs_zeroshot: bool = False
    config: type[MethodConfig] | None = None  # its config model; None = ``name`` alone
    doc: str = ""

    def __post_init__(self) -> None:
        if self.config is None:
            object.__setattr__(self, "config", create_model(
                f"{self.name}_config", __base__=MethodConfig, __doc__=f"{self.name}: no hyper-parameters",
                name=(Literal[self.name], self.name)))  # type: ignore[valid-type]
        name_field = self.config.model_fields.get("name")  # type: ignore[union-attr]
        if name_field is None or name_field.annotation != Literal[self.name]:  # type: ignore[comparison-overlap]
            raise TypeError(f"method {self.name!r}: its config {self.config.__name__} must declare "  # type: ignore[union-attr]
                            f"name: Literal[{self.name!r}] = {self.name!r}")

    @property
    def params(self) -> tuple[str, ...]:
        """The config fields this method reads besides ``name`` (exactly those enter its cache key)."""
        return tuple(f for f in self.config.model_fields if f != "name")  # type: ignore[union-attr]

    def make_loss(self, cfg: MethodConfig, train_counts: np.ndarray, epochs: int,
                  q_hat: np.ndarray | None = None, logit_scale: float = 1.0) -> LossFn:
        """The training loss of a ``train`` method."""
        if self.loss_factory is None:
            base = getattr(cfg, "base_method", None)
            raise ValueError(f"method {self.name!r} is a {self.kind} method and has no training loss"
                             + (f"; train its base method ({base!r}) instead" if base else ""))
        self._check_prior(q_hat, len(train_counts))
        return self.loss_factory(cfg, np.asarray(train_counts), epochs, q_hat, logit_scale)

    def adjust(self, logits: ArrayLike, cfg: MethodConfig, train_counts: np.ndarray,
               q_hat: np.ndarray | None = None, zeroshot: ArrayLike | None = None) -> ArrayLike:
        """The corrected logits of a ``posthoc`` method (same type as ``logits``)."""
        if self.adjust_fn is None:
            raise ValueError(f"method {self.name!r} is a {self.kind} method and has no post-hoc adjustment")
        self._check_prior(q_hat, len(train_counts))
        if self.needs_zeroshot and (zeroshot is None or tuple(np.shape(zeroshot)) != tuple(np.shape(logits))):
            raise ValueError(f"method {self.name!r} adds the backbone's zero-shot logits of the same examples "
                             f"(shape {tuple(np.shape(logits))}); got "
                             f"{None if zeroshot is None else tuple(np.shape(zeroshot))}. The stage-1 cache "
                             f"entry has none when the backbone has no zero-shot classifier; use posthoc_la")
        z = logits if isinstance(logits, torch.Tensor) else torch.as_tensor(np.asarray(logits))
        zs = None if zeroshot is None else torch.as_tensor(np.asarray(zeroshot) if not isinstance(
            zeroshot, torch.Tensor) else zeroshot).to(z.device, z.dtype)
        out = self.adjust_fn(z, cfg, np.asarray(train_counts), q_hat, zs)
        return out if isinstance(logits, torch.Tensor) else out.numpy()

    def _check_prior(self, q_hat: np.ndarray | None, num_classes: int) -> None:
        if not self.needs_prior:
            return
        if q_hat is None:
            raise ValueError(f"method {self.name!r} needs q_hat, the backbone's estimated pre-training prior "
                             f"(trainables.prior.estimate_prior); none was given")
        if len(q_hat) != num_classes:
            raise ValueError(f"method {self.name!r}: q_hat has {len(q_hat)} classes, train_counts {num_classes}")


METHODS: Registry[Method] = Registry("method")


def register(method: Method) -> Method:
    """Register ``method`` under its own name."""
    return METHODS.register(method.name)(method)


def get_method(name: str) -> Method:
    """The method registered as ``name`` (KeyError with a did-you-mean otherwise)."""
    return METHODS.get(name)


def log_train_prior(train_counts: np.ndarray) -> torch.Tensor:
    """log p_s [C] (float32), p_s = counts / sum, a class without images counted as one."""
    n = np.maximum(np.asarray(train_counts, dtype=np.float64), 1.0)
    return torch.from_numpy(np.log(n / n.sum())).float()


def log_prior(q_hat: np.ndarray, eps: float = 1e-12) -> torch.Tensor:
    """log q_hat [C] (float32), renormalised, with q clipped at ``eps`` so the log stays finite."""
    q = np.asarray(q_hat, dtype=np.float64)
    if q.ndim != 1 or not np.isfinite(q).all() or (q < 0).any() or q.sum() <= 0:
        raise ValueError(f"q_hat must be a finite non-negative vector with a positive sum; got {q!r}")
    q = np.maximum(q / q.sum(), eps)
    return torch.from_numpy(np.log(q / q.sum())).float()


# Importing the method modules registers them; they need the names above.
from trainables.methods import losses as _losses  # noqa: E402,F401
from trainables.methods import posthoc as _posthoc  # noqa: E402,F401

if importlib.util.find_spec("trainables.methods.backdoor") is not None:
    from trainables.methods import backdoor as _backdoor  # noqa: E402,F401

__all__ = ["METHODS", "LossFn", "Method", "get_method", "log_prior", "log_train_prior", "register"]
