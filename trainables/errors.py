"""Failures of a trial that happen again on every retry, so retrying them only wastes time.

``ConfigurationError``: the trial's configuration cannot run (a method that needs a prior the
backbone lacks, a frozen model, an invalid field). ``NonFiniteLossError``: the training loss
became NaN or infinite, which a retry from the last checkpoint reproduces bit for bit.

The driver's trial wrapper (``platform.execute.without_meta``) reports ``FATAL_KEY`` (the error's ``Type: message``) just before it raises one
of these; the driver then sets the trial's retry budget to what it has used, so Tune records the
failure once instead of retrying it ``max_failures`` times. Any other error is retried.
"""

from __future__ import annotations

FATAL_KEY = "ltbias/fatal"
"""Result key of the last report of a trial that failed deterministically (value: the reason)."""


class ConfigurationError(ValueError):
    """The trial configuration cannot run; the message names the field and the fix."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


DETERMINISTIC = (ConfigurationError, NonFiniteLossError)
"""Error types a retry reproduces: never retried."""


def is_deterministic(exc: BaseException) -> bool:
    """True for an error that a retry of the same trial would raise again."""
    return isinstance(exc, DETERMINISTIC)


def reason(exc: BaseException) -> str:
    """``Type: first line of the message``."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}".strip()


__all__ = ["ConfigurationError", "DETERMINISTIC", "FATAL_KEY", "NonFiniteLossError",
           "is_deterministic", "reason"]
