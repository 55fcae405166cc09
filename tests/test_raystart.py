"""The driver's start-up: Ray starts on a thread (``platform.raystart``) while the driver opens its
stores; each failure still exits with its own message and code, Ctrl-C during start-up exits 130
and shuts down the Ray it started, and validating and planning a study import no torch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from platform import raystart
from platform.errors import EnvironmentFailure
from platform.run import EXIT_ENVIRONMENT, EXIT_INTERRUPTED, EXIT_INVALID, main

REPO = Path(__file__).resolve().parent.parent
SMOKE = "studies/smoke.yaml"
RAY_FAILED = "could not start or join a local Ray instance: RuntimeError: no raylet"


@pytest.fixture
def fake_ray(monkeypatch):
    """Ray's start and shutdown replaced by recorders; ``state["start"]`` is what a start does."""
    state: dict = {"starts": [], "shutdowns": 0, "start": lambda: True}

    def attach(address):
        state["starts"].append(address)
        return state["start"]()

    def shutdown():
        state["shutdowns"] += 1

    monkeypatch.setattr(raystart, "_init_ray", attach)
    monkeypatch.setattr(raystart, "shutdown_ray", shutdown)
    monkeypatch.setattr("platform.execute.shutdown_ray", shutdown)
    yield state
    assert raystart.pending_start() is None  # every start was claimed or abandoned


def _argv(tmp_path: Path, *extra: str) -> list[str]:
    return [SMOKE, "--storage", str(tmp_path / "runs"),
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", *extra]


def test_a_ray_start_that_fails_in_the_background_exits_3_with_rays_message(fake_ray, tmp_path, capsys):
    def fail():
        raise EnvironmentFailure(RAY_FAILED)

    fake_ray["start"] = fail
    assert main(_argv(tmp_path)) == EXIT_ENVIRONMENT
    err = capsys.readouterr().err
    assert RAY_FAILED in err and "Traceback" not in err
    assert fake_ray["starts"] == [None] and fake_ray["shutdowns"] == 0
    # the driver's lock was released: a second attempt is not told another driver runs the study
    assert main(_argv(tmp_path)) == EXIT_ENVIRONMENT and "already being run" not in capsys.readouterr().err


def test_a_tracking_store_that_fails_while_ray_starts_exits_3_naming_the_store(fake_ray, tmp_path, capsys):
    def fail():
        raise EnvironmentFailure(RAY_FAILED)

    fake_ray["start"] = fail  # both fail: the store is checked first and named
    bad = tmp_path / "file-not-folder"
    bad.write_text("x")
    uri = f"sqlite:///{bad / 'mlflow.db'}"
    assert main([SMOKE, "--storage", str(tmp_path / "runs"), "--tracking-uri", uri]) == EXIT_ENVIRONMENT
    err = capsys.readouterr().err
    assert uri in err and RAY_FAILED not in err and "Traceback" not in err


def test_a_ray_start_nobody_claims_is_shut_down(fake_ray, tmp_path, capsys):
    # --resume with nothing to continue fails before run_study attaches to Ray
    assert main(_argv(tmp_path, "--resume")) == EXIT_INVALID
    assert "no run of study" in capsys.readouterr().err
    assert fake_ray["starts"] == [None] and fake_ray["shutdowns"] == 1


@pytest.fixture
def fresh_sigint():
    """SIGINT handled as in a fresh driver process (KeyboardInterrupt): an in-process study of an
    earlier test leaves Ray's or Tune's handler, which only sets a stop flag."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_during_start_up_exits_130_and_shuts_down_the_ray_it_started(fake_ray, fresh_sigint,
                                                                          tmp_path, capsys):
    def interrupted_start():
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C reaches the main thread while Ray starts
        time.sleep(1.0)
        return True

    fake_ray["start"] = interrupted_start
    assert main(_argv(tmp_path)) == EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert "interrupted; continue with:" in err and "Traceback" not in err
    assert fake_ray["shutdowns"] == 1  # the start finished after Ctrl-C and was shut down


def test_init_ray_claims_the_background_start_once(fake_ray) -> None:
    raystart.start_in_background("auto")
    raystart.start_in_background("auto")  # a second call while one is pending starts nothing
    assert raystart.init_ray("auto") is True
    assert fake_ray["starts"] == ["auto"] and raystart.pending_start() is None
    raystart.abandon_start()  # claimed: nothing left to end
    assert fake_ray["shutdowns"] == 0


def test_validating_planning_and_importing_the_engine_import_no_torch() -> None:
    code = ("import sys\n"
            "from platform.studyfile import load_study\n"
            "from platform.plan import check_fits, local_capacity, make_plan\n"
            "from platform.preflight import preflight\n"
            f"plan = make_plan(load_study({SMOKE!r}), {SMOKE!r})\n"
            "preflight(plan)\n"
            "check_fits(plan, *local_capacity(count_gpus=plan.resources['gpu'] > 0))\n"
            "import platform.execute\n"
            "heavy = ('torch', 'torchvision', 'timm', 'open_clip', 'matplotlib', 'tensorboardX',\n"
            "         'trainables.trainable')\n"
            "print(sorted(m for m in heavy if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.timeout(180)
def test_sigterm_after_a_background_start_reaches_the_drivers_handler() -> None:
    # Ray's core worker installs a native SIGTERM handler (it prints "SIGTERM received" and, in a
    # Tune run, aborted the driver with -6); after a start on another thread, init_ray puts the
    # driver's handler (stop like Ctrl-C) back.
    code = ("import os, signal, sys, time\n"
            "from platform import raystart\n"
            "signal.signal(signal.SIGTERM, lambda s, f: print('handled', flush=True))\n"
            "raystart.start_in_background(None)\n"
            "assert raystart.init_ray(None) is True\n"
            "os.kill(os.getpid(), signal.SIGTERM)\n"
            "time.sleep(0.5)\n"
            "raystart.shutdown_ray()\n"
            "print('done', flush=True)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=150, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["handled", "done"], out.stdout + out.stderr[-2000:]
    assert "SIGTERM received" not in out.stderr, out.stderr[-2000:]  # Ray's native handler never ran


def test_a_second_driver_is_refused_before_it_starts_ray(fake_ray, tmp_path, capsys):
    from platform.guard import DriverLock
    from platform.plan import make_plan
    from platform.studyfile import load_study

    argv = _argv(tmp_path)
    flags = [("storage", str(tmp_path / "runs"), "--storage"),
             ("tracking_uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--tracking-uri")]
    plan = make_plan(load_study(SMOKE, (), flags), SMOKE)
    with DriverLock(plan.storage, plan.study.name):  # the first driver
        assert main(argv) == EXIT_INVALID
    err = capsys.readouterr().err
    assert f"pid {os.getpid()}" in err and "already being run" in err and "Traceback" not in err
    assert fake_ray["starts"] == []  # no Ray started (and none to shut down) for a refusal
