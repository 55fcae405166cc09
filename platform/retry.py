"""Retry with backoff for writes to the tracking and Optuna stores.

A store that is briefly locked (SQLite with another writer, ``sqlite3 .backup``, a hung NFS lock)
or briefly unreachable (a tracking server restarting) must not crash the driver or leave an
Optuna trial RUNNING forever. ``retry`` calls a function until it succeeds or ``deadline_s`` has
passed, sleeping 0.25 s, 0.5 s, 1 s, ... (at most ``max_delay_s``) between attempts, and only on
errors that a later attempt can cure (``transient``); anything else is raised at once.
``Retrying`` wraps a client object so that every method call goes through ``retry``.

SQLite writers also wait ``SQLITE_BUSY_TIMEOUT_S`` inside the driver before SQLite reports
"database is locked" (``busy_timeout`` on every connection of our engines).
"""

from __future__ import annotations

import logging
import os
import random
import time
from typing import Any, Callable, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_S = 30.0
"""How long one SQLite statement waits for another writer's lock before failing."""

DEADLINE_S = float(os.environ.get("LTBIAS_STORE_RETRY_S", "180"))
"""How long a store write is retried in all before the error is raised (``$LTBIAS_STORE_RETRY_S``)."""

_TRANSIENT_TEXT = ("database is locked", "database table is locked", "busy", "timed out",
                   "timeout", "connection refused", "connection reset", "temporarily unavailable",
                   "could not connect", "server closed the connection", "503", "502", "504",
                   "too many connections", "deadlock")


def transient(exc: BaseException) -> bool:
    """True for an error that a later attempt can cure: a locked or busy database, a dropped
    connection, a gateway error. Programming and validation errors are not transient."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:  # the error and what it wraps
        seen.add(id(exc))
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return True
        text = f"{type(exc).__name__}: {exc}".lower()
        module = type(exc).__module__
        if ("operationalerror" in text or "mlflowexception" in text or "restexception" in text
                or module.startswith(("sqlalchemy", "optuna", "sqlite3", "requests", "urllib3"))) \
                and any(t in text for t in _TRANSIENT_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def retry(fn: Callable[..., T], *args: Any, what: str, deadline_s: float | None = None,
          max_delay_s: float = 8.0, sleep: Callable[[float], None] = time.sleep,
          **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, retried on transient errors with exponential backoff and jitter
    until ``deadline_s`` (default ``DEADLINE_S``) has passed; ``what`` names the store in logs."""
    deadline = time.monotonic() + (DEADLINE_S if deadline_s is None else deadline_s)
    delay, attempt = 0.25, 0
    while True:
        attempt += 1
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - filtered by transient() below
            if not transient(exc) or time.monotonic() + delay > deadline:
                raise
            first = (str(exc).splitlines() or [""])[0][:200]
            log.warning("%s: %s (attempt %d); retrying in %.1f s", what, first, attempt, delay)
            sleep(delay * (0.75 + 0.5 * random.random()))
            delay = min(delay * 2, max_delay_s)


class Retrying:
    """A proxy of ``target`` whose method calls are retried with ``retry`` (attributes pass through)."""

    def __init__(self, target: Any, what: str) -> None:
        self._target = target
        self._what = what

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            return retry(attr, *args, what=f"{self._what} ({name})", **kwargs)

        call.__name__ = name
        return call


def sqlite_engine_kwargs() -> dict[str, Any]:
    """SQLAlchemy ``engine_kwargs`` giving every SQLite connection a busy timeout."""
    return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}


__all__ = ["DEADLINE_S", "Retrying", "SQLITE_BUSY_TIMEOUT_S", "retry", "sqlite_engine_kwargs",
           "transient"]
