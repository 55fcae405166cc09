"""Fault injection for the fault-tolerance tests: ``runtime.fault`` (docs/ARCHITECTURE.md, section 2).

``parse_fault`` reads ``nan_at_epoch:N`` / ``crash_at_epoch:N``; ``crash_if_due`` raises
``SimulatedCrash`` at the start of epoch N of a run that did not resume from a checkpoint (so a
retried trial gets past it), and ``inject_nan`` turns the training loss of epoch N into NaN (which
the training loop reports as ``NonFiniteLossError``).
"""

from __future__ import annotations

import torch

from trainables.errors import ConfigurationError


class SimulatedCrash(RuntimeError):
    """runtime.fault = crash_at_epoch:N (fault-tolerance tests)."""


def parse_fault(fault: str | None) -> dict[str, int]:
    """runtime.fault 'nan_at_epoch:N' / 'crash_at_epoch:N' -> {'nan': N} / {'crash': N}."""
    if not fault:
        return {}
    kind, _, n = fault.partition(":")
    names = {"nan_at_epoch": "nan", "crash_at_epoch": "crash"}
    if kind not in names or not n.isdigit():
        raise ConfigurationError(f"runtime.fault {fault!r} is not understood; use nan_at_epoch:N or crash_at_epoch:N")
    return {names[kind]: int(n)}


def crash_if_due(fault: dict[str, int], epoch: int, resumed: bool) -> None:
    """Raise ``SimulatedCrash`` when ``fault`` asks for a crash at ``epoch`` and the run did not resume."""
    if fault.get("crash") == epoch and not resumed:
        raise SimulatedCrash(f"runtime.fault crash_at_epoch:{epoch}: simulated crash at epoch {epoch}")


def inject_nan(loss: torch.Tensor, nan: bool) -> torch.Tensor:
    """``loss`` times NaN when ``nan`` (runtime.fault nan_at_epoch:N at epoch N), else ``loss``."""
    return loss * float("nan") if nan else loss
