"""platform.guard: the driver lock, the reaper and the address check, without Ray."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from platform.errors import EnvironmentFailure, PlatformInputError
from platform.guard import DriverLock, check_address, descendants

REPO = Path(__file__).resolve().parent.parent


def test_a_second_lock_on_the_same_study_names_the_holder(tmp_path: Path) -> None:
    first = DriverLock(str(tmp_path), "study").acquire()
    try:
        with pytest.raises(PlatformInputError, match=rf"already being run by another driver \(pid {os.getpid()} on host "):
            DriverLock(str(tmp_path), "study").acquire()
        DriverLock(str(tmp_path), "other").acquire().release()  # another study is independent
    finally:
        first.release()
    DriverLock(str(tmp_path), "study").acquire().release()  # free again


def test_a_killed_holder_releases_the_lock(tmp_path: Path) -> None:
    code = ("import sys, time; from platform.guard import DriverLock; "
            "lock = DriverLock(sys.argv[1], 'study').acquire(); print('held', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(PlatformInputError, match=f"pid {holder.pid}"):
            DriverLock(str(tmp_path), "study").acquire()
    finally:
        holder.kill()
        holder.wait()
    DriverLock(str(tmp_path), "study").acquire().release()


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_the_reaper_kills_what_a_dead_driver_left_running(tmp_path: Path) -> None:
    # A "driver" that starts a reaper and a long-lived child in its own session, then is killed.
    code = ("import subprocess, sys, time; from platform.guard import Reaper; r = Reaper(''); "
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True); "
            "print(r.proc.pid, c.pid, flush=True); time.sleep(600)")
    driver = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    reaper, child = map(int, driver.stdout.readline().split())
    time.sleep(3)  # the reaper has seen the child
    assert child in descendants(driver.pid)
    driver.kill()
    driver.wait()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (_alive(child) or _alive(reaper)):
        time.sleep(0.5)
    assert not _alive(child), "the driver's child outlived it"
    assert not _alive(reaper), "the reaper did not exit"


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_an_address_nobody_listens_on_is_an_environment_failure() -> None:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        with pytest.raises(EnvironmentFailure, match=address.replace(".", r"\.")):
            check_address(address, timeout_s=2)
    with pytest.raises(PlatformInputError, match="unknown scheme"):
        check_address("http://127.0.0.1:1")
    check_address("auto")  # left to Ray
