"""Errors a trial raises that the platform treats specially.

``ConfigurationError``: the trial's configuration cannot work (a missing file, a model name its
library does not know, placeholder class names where names matter). Retrying cannot help, so the
platform does not retry it: the study stops with exit status 2 and the message.
``NonFiniteLoss``: the training loss became NaN or infinite.
"""

from __future__ import annotations


class ConfigurationError(ValueError):
    """A trial configuration that cannot run; the message names the field and the fix."""


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""
