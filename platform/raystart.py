"""Attach the driver to Ray (a cluster, or a local instance it starts) and detach from it.

Starting a local Ray takes seconds, most of them spent waiting on the processes it spawns. The
CLI (``platform.run``) therefore calls ``start_in_background`` as soon as a study is valid: Ray
starts on a thread while the driver imports MLflow, opens the tracking store, takes the study's
lock and builds its searcher. ``init_ray`` (called by ``platform.execute.run_study``) then claims
that start, waiting for it if needed, and raises its error, if any, as it would have raised it
itself. A start nobody claims (the study failed an earlier check, or Ctrl-C came first) is ended
by ``abandon_start``: it waits for the thread and shuts down the Ray instance it started.

Ray itself is imported only inside these functions: importing this module costs nothing.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

from platform import paths
from platform.errors import EnvironmentFailure, PlatformInputError
from platform.guard import Reaper, check_address

# Ray binds a single-node instance's servers to the node's IP (every interface) unless clusters
# are off, when it uses 127.0.0.1. Read by Ray when it is imported: ``platform.run`` sets it
# before importing Ray for a local study; set here too for the processes Ray starts.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

# Never shipped to a cluster with the working directory: environments, outputs, VCS, caches.
RUNTIME_ENV_EXCLUDES = [".venv", "outputs", ".git", "tests/_artifacts", "benchmarks/results",
                        "node_modules", "**/__pycache__"]

_reaper: Reaper | None = None
_release: threading.Event | None = None  # set by shutdown_ray: ends the thread that started Ray


def _init_ray(address: str | None) -> bool:
    """``init_ray`` without the background start (see there)."""
    global _reaper
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    remote = bool(address and address != "local")
    on_term = signal.getsignal(signal.SIGTERM)
    try:
        if remote:
            check_address(address)
            # Ray puts the working directory first on the workers' PYTHONPATH, so they import this
            # checkout's trainables/ (and our platform package, which also serves the stdlib API).
            ray.init(address=address, runtime_env={"working_dir": str(paths.REPO_ROOT),
                                                   "excludes": RUNTIME_ENV_EXCLUDES})
        else:
            if os.environ.get(LOOPBACK_ENV) != "0":  # platform.run sets it before the start's thread
                os.environ[LOOPBACK_ENV] = "0"
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False,
                     dashboard_host="127.0.0.1",
                     logging_config=ray.LoggingConfig(log_level="WARNING"))
    except (PlatformInputError, EnvironmentFailure):
        raise
    except Exception as exc:  # noqa: BLE001 - whatever Ray raises, the environment is at fault
        where = f"the Ray cluster at {address}" if remote else "a local Ray instance"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EnvironmentFailure(f"could not start or join {where}: {type(exc).__name__}: {first}"
                                 "; check that the cluster is up (ray status) and its Ray and "
                                 "Python versions match this one") from exc
    if callable(on_term) and threading.current_thread() is threading.main_thread():
        # ray.init installs a native SIGTERM handler that aborts the process; the driver's own
        # (platform.run: stop like Ctrl-C) must stay in charge. (On another thread it installs none.)
        signal.signal(signal.SIGTERM, on_term)
    if not remote:
        # Ray has no public accessor of the session folder; every Ray process names it.
        node = getattr(getattr(getattr(ray, "_private", None), "worker", None), "_global_node", None)
        _reaper = Reaper(node.get_session_dir_path() if node is not None else "")
    return True


class _NotMainThreadNotice(logging.Filter):
    """Drops Ray's notice that a ``ray.init`` off the main thread installs no SIGTERM handler: the
    driver keeps its own handler on purpose (see ``_init_ray``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


class RayStart:
    """``_init_ray(address)`` on a daemon thread (``start()``); ``result()`` waits for it.

    The thread outlives the start until ``shutdown_ray``: Ray starts its local processes with
    ``PR_SET_PDEATHSIG``, which Linux sends when the *thread* that spawned them exits, so a thread
    that returned after ``ray.init`` would take the Ray instance down with it.
    """

    def __init__(self, address: str | None) -> None:
        self.address = address
        self.started: bool | None = None
        self.error: BaseException | None = None
        self._done = threading.Event()
        self._release = threading.Event()
        self._begun = False
        self._thread = threading.Thread(target=self._run, name="ltbias-ray-start", daemon=True)

    def start(self) -> None:
        """Begin the start on its thread."""
        self._begun = True
        self._thread.start()

    def _run(self) -> None:
        global _release
        worker_log = logging.getLogger("ray._private.worker")
        notice = _NotMainThreadNotice()
        worker_log.addFilter(notice)
        try:
            self.started = _init_ray(self.address)
            if self.started:
                _release = self._release
        except BaseException as exc:  # noqa: BLE001 - handed to the thread that claims the start
            self.error = exc
        finally:
            worker_log.removeFilter(notice)
            self._done.set()
        if self.started:
            self._release.wait()  # Ray's processes' parent thread lives until shutdown_ray

    def wait(self) -> None:
        """Block until the start has finished (interruptible by Ctrl-C); at once if never begun."""
        while self._begun and not self._done.wait(0.5):
            pass

    def result(self) -> bool:
        """True when this start started (or joined) Ray, as ``init_ray`` returns; raises its error."""
        self.wait()
        if self.error is not None:
            raise self.error
        return bool(self.started)


_pending: RayStart | None = None


def start_in_background(address: str | None) -> None:
    """Start attaching to Ray now, on a thread; ``init_ray`` claims it. The caller imports Ray
    first, on its own thread (so that no two threads import Ray's modules at once), and must call
    ``abandon_start`` when it leaves."""
    global _pending
    import ray  # noqa: F401 - imported here, on the calling thread, before the thread starts

    if _pending is None:
        _pending = RayStart(address)  # owned before its thread runs: Ctrl-C in start() leaks nothing
        _pending.start()


def init_ray(address: str | None) -> bool:
    """Attach to Ray; returns True when this call started it (and so must shut it down).

    A cluster (``address`` or ``$RAY_ADDRESS``) gets the repo as working directory, so workers
    import ``trainables`` from the same code; its address must answer within a few seconds. A
    local instance uses the editable install, listens on 127.0.0.1 only (no dashboard) and is
    watched by a ``Reaper`` that kills its processes if the driver dies without shutting it down.
    Any failure to start or reach Ray is an EnvironmentFailure. A start begun by
    ``start_in_background`` is claimed (waited for) instead of starting another.
    """
    global _pending
    if _pending is not None:
        try:
            return _pending.result()
        except (PlatformInputError, EnvironmentFailure):
            _pending = None  # it failed: nothing to shut down
            raise
        finally:
            if _pending is not None and _pending.started is not None:
                _pending = None  # claimed: the caller shuts it down
            _restore_sigterm()
    return _init_ray(address)


def _restore_sigterm() -> None:
    """Reinstall the driver's SIGTERM handler (platform.run: stop like Ctrl-C) after a ``ray.init``
    on another thread: Ray's core worker installs a native handler that aborts the process, and
    only the main thread can put the Python one back. (Until the start is claimed, a SIGTERM
    aborts the driver: Ray's processes die with it.)"""
    handler = signal.getsignal(signal.SIGTERM)
    if callable(handler) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def abandon_start() -> None:
    """End a background start that ``init_ray`` never claimed: wait for it and shut down the Ray
    instance it started. A second Ctrl-C while waiting leaves that to Ray's own exit handler."""
    global _pending
    pending, _pending = _pending, None
    if pending is None:
        return
    try:
        pending.wait()
    except KeyboardInterrupt:
        return
    if pending.started:
        shutdown_ray()


def shutdown_ray() -> None:
    """Shut down the Ray instance ``init_ray`` started and end its reaper."""
    global _reaper, _release
    import ray

    ray.shutdown()
    if _release is not None:
        _release.set()
        _release = None
    if _reaper is not None:
        _reaper.stop()
        _reaper = None


def pending_start() -> Any:
    """The background start not yet claimed (None when there is none); for tests."""
    return _pending


__all__ = ["LOOPBACK_ENV", "RUNTIME_ENV_EXCLUDES", "RayStart", "abandon_start", "init_ray",
           "pending_start", "shutdown_ray", "start_in_background"]
