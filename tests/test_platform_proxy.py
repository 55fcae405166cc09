"""Our `platform` package also serves as the stdlib `platform` module that libraries call."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import platform

REPO = Path(__file__).resolve().parent.parent
FUNCTIONS = ("system", "machine", "python_version", "release", "node", "uname",
             "python_implementation", "architecture")


@pytest.fixture(scope="module")
def stdlib_platform():
    """The real stdlib platform.py, loaded under another name so ours stays `platform`."""
    path = Path(sysconfig.get_paths()["stdlib"]) / "platform.py"
    spec = importlib.util.spec_from_file_location("_stdlib_platform_for_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", FUNCTIONS)
def test_stdlib_functions_answer_like_the_stdlib(stdlib_platform, name):
    assert getattr(platform, name)() == getattr(stdlib_platform, name)()


def test_platform_is_our_package_and_run_is_our_module():
    import platform.run
    assert Path(platform.__file__).resolve() == REPO / "platform" / "__init__.py"
    assert Path(platform.run.__file__).resolve() == REPO / "platform" / "run.py"
    assert callable(platform.run.main)


def test_heavy_libraries_import_after_our_platform_package():
    code = ("import platform, platform.run\n"
            "import torch, ray, mlflow, optuna, timm, open_clip\n"
            "assert platform.run.__file__.endswith('platform/run.py')\n"
            "print('ok', platform.system(), torch.__version__.split('+')[0])\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok ")
