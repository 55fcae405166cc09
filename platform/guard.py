"""What keeps one study execution safe from others and leaves nothing behind when it dies.

- ``DriverLock``: an exclusive lock on the study's storage for the driver's lifetime. A second
  driver of the same study on the same storage stops at once (exit 2) and names the first (pid,
  host, start time). The lock is an OS file lock, so a SIGKILLed driver releases it.
- ``Reaper``: a small watchdog process (its own session, so a signal to the driver's process group
  does not reach it) that remembers the local Ray processes the driver started and kills them when
  the driver is gone, however it went (Ray's dashboard and runtime-env agents otherwise outlive a
  SIGKILLed driver).
- ``check_address``: a Ray cluster address answered within a few seconds, else an environment error
  (``ray.init`` on an address nobody listens on waits for minutes and ignores SIGTERM).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from filelock import FileLock, Timeout

from platform import paths
from platform.errors import EnvironmentFailure, PlatformInputError

LOCK_SUFFIX = ".driver.lock"
HOLDER_SUFFIX = ".driver.json"


def lock_path(storage: str, study: str) -> Path:
    """The lock file of study ``study`` on ``storage``: next to its experiment folder when the
    storage is local, else under the outputs folder (keyed by the storage URI)."""
    if paths.is_local(storage):
        return paths.local_path(storage) / f".{study}{LOCK_SUFFIX}"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in storage.rstrip("/"))
    return paths.outputs_dir() / "locks" / f"{safe}_{study}{LOCK_SUFFIX}"


class DriverLock:
    """Exclusive, for the driver's lifetime: ``with DriverLock(storage, study): ...``."""

    def __init__(self, storage: str, study: str) -> None:
        self.path = lock_path(storage, study)
        self.holder = self.path.with_name(self.path.name.removesuffix(LOCK_SUFFIX) + HOLDER_SUFFIX)
        self.study, self.storage = study, storage
        self._lock: FileLock | None = None

    def acquire(self) -> "DriverLock":
        """Take the lock or raise PlatformInputError naming the driver that holds it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PlatformInputError(f"--storage {self.storage}: cannot create {self.path.parent} "
                                     f"({exc}); pass a writable --storage") from exc
        lock = FileLock(str(self.path), thread_local=False)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise self._held() from None
        self._lock = lock
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv}
        tmp = self.holder.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(info), encoding="utf-8")
        os.replace(tmp, self.holder)
        return self

    def check_free(self) -> None:
        """Raise PlatformInputError naming the driver that holds the lock, without taking it (a
        cheap early refusal, before the driver starts Ray); anything else is left to ``acquire``."""
        if not self.path.parent.is_dir():
            return
        lock = FileLock(str(self.path), thread_local=False)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise self._held() from None
        except OSError:
            return  # e.g. unwritable storage: acquire (in run_study) says so
        lock.release()

    def _held(self) -> PlatformInputError:
        return PlatformInputError(
            f"study {self.study!r} on storage {self.storage} is already being run by "
            f"{self._describe_holder()}; wait for it to finish (or stop it), or run this "
            "study under another name or --storage")

    def _describe_holder(self) -> str:
        try:
            info = json.loads(self.holder.read_text(encoding="utf-8"))
            return (f"another driver (pid {info.get('pid')} on host {info.get('host')}, started "
                    f"{info.get('started')}: {' '.join(info.get('argv') or [])})")
        except (OSError, ValueError):
            return f"another driver (lock {self.path})"

    def release(self) -> None:
        """Drop the lock (the holder file goes with it)."""
        if self._lock is not None:
            try:
                self.holder.unlink()
            except OSError:
                pass
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "DriverLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# --------------------------------------------------------------------------- the reaper

def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids of every process (from /proc)."""
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read().decode(errors="replace")
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        out.setdefault(ppid, []).append(int(entry))
    return out


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (children, their children, ...)."""
    kids, out, todo = _children(), set(), [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def _with_session(session: str) -> set[int]:
    """Processes whose command line names Ray session folder ``session``."""
    out = set()
    needle = session.encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    if needle in fh.read():
                        out.add(int(entry))
            except OSError:
                continue
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().split(b")")[-1].split()[0] != b"Z"
    except OSError:
        return False


def reap(driver: int, session: str, interval_s: float = 1.0) -> None:
    """Watch ``driver``; once it is gone kill what it started (SIGTERM, then SIGKILL after 5 s)."""
    import signal
    known: set[int] = set()
    while _alive(driver):
        known |= descendants(driver)
        time.sleep(interval_s)
    victims = {p for p in known | (_with_session(session) if session else set())
               if p != os.getpid() and _alive(p)}  # the reaper is the driver's child too
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
        for pid in victims:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        end = time.monotonic() + wait
        while time.monotonic() < end and any(_alive(p) for p in victims):
            time.sleep(0.2)
        victims = {p for p in victims if _alive(p)}
        if not victims:
            return


class Reaper:
    """The watchdog of one driver (Linux); ``stop()`` when the driver shut Ray down itself."""

    def __init__(self, session_dir: str) -> None:
        self.proc: subprocess.Popen | None = None
        if not Path("/proc").is_dir():
            return
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from platform.guard import reap; "
             "reap(int(sys.argv[1]), sys.argv[2])", str(os.getpid()), session_dir],
            cwd=str(paths.REPO_ROOT), start_new_session=True, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        """End the watchdog (Ray was shut down cleanly)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None


# --------------------------------------------------------------------------- cluster address

CONNECT_TIMEOUT_S = 5.0


def check_address(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Raise EnvironmentFailure naming ``address`` when nothing accepts a TCP connection there.

    ``host:port`` (a GCS) and ``ray://host:port`` (Ray Client) are probed; ``auto`` is left to Ray
    (it reads the address of a cluster started on this machine).
    """
    if address in ("auto", "local"):
        return
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if parsed.scheme not in ("tcp", "ray"):
        raise PlatformInputError(f"--address {address}: unknown scheme {parsed.scheme!r}; give "
                                 "host:port of the head's GCS, ray://host:10001 or auto")
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError:
        host, port = None, None
    if not host or not port:
        raise PlatformInputError(f"--address {address}: expected host:port (e.g. 10.0.0.5:6379), "
                                 "ray://host:10001 or auto")
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        raise EnvironmentFailure(f"--address {address}: no Ray cluster answers at {host}:{port} "
                                 f"within {timeout_s:g} s ({exc}); start it (ray start --head) or "
                                 "pass the right --address") from None


__all__ = ["CONNECT_TIMEOUT_S", "DriverLock", "Reaper", "check_address", "descendants",
           "lock_path", "reap"]
