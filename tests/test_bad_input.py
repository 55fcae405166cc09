"""Malformed study files: every one in tests/bad_studies/ exits 2 with a message, never a traceback.

Each file starts with ``# expect: <text the error must contain>`` (the field, or the words that
name the problem); the message must also start with the file name. The CLI runs in-process with ``--dry-run`` (nothing may start for a bad study, and a
resource check must not wait for a cluster); heavy libraries must stay unimported for that.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from platform.run import main

REPO = Path(__file__).resolve().parent.parent
BAD = REPO / "tests" / "bad_studies"
FILES = sorted(BAD.glob("*.yaml"))
HEAVY = ("ray", "torch", "mlflow", "optuna")


def expectation(path: Path) -> str | None:
    """The text after '# expect:' on the file's first line, or None."""
    first = path.read_text(encoding="utf-8").splitlines()[0]
    return first.split("# expect:", 1)[1].strip() if first.startswith("# expect:") else None


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """(exit status, stdout + stderr) of ``python -m platform.run ARGV`` run in this process."""
    try:
        code = main(argv)
    except SystemExit as e:  # argparse exits for its own errors
        code = e.code
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.fixture(autouse=True)
def _outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A bad study must not write anything; if it did, it lands in tmp_path, not the repo.
    monkeypatch.setenv("LTBIAS_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def test_there_are_at_least_25_bad_study_files_each_saying_what_to_expect() -> None:
    assert len(FILES) >= 25, [f.name for f in FILES]
    assert len([f for f in FILES if f.name.startswith("x_")]) >= 15
    assert [f.name for f in FILES if not expectation(f)] == []


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_bad_study_exits_2_naming_the_problem_without_traceback(path: Path, capsys) -> None:
    code, text = run_cli([str(path), "--dry-run"], capsys)
    assert code == 2, f"exit {code}; output:\n{text}"
    assert "Traceback" not in text
    assert "dry run: nothing was started" not in text
    expected = expectation(path)
    assert expected and expected in text, f"{expected!r} missing from:\n{text}"
    assert f"{path}:" in text, text  # file:line: field = value: message


def test_invalid_set_override_names_the_flag(capsys) -> None:
    code, text = run_cli([str(REPO / "studies" / "smoke.yaml"), "--dry-run",
                          "--set", "finetune.batch_size=0"], capsys)
    assert code == 2 and "--set finetune.batch_size=0" in text and "Traceback" not in text


def test_missing_study_file_exits_2(tmp_path: Path, capsys) -> None:
    code, text = run_cli([str(tmp_path / "nope.yaml"), "--dry-run"], capsys)
    assert code == 2 and "no such study file" in text and "Traceback" not in text


def test_cli_rejects_bad_input_before_importing_heavy_libraries() -> None:
    # In a fresh interpreter: a typo in a study must come back in well under a second of imports,
    # so platform.run may import neither Ray nor torch nor MLflow before the study is valid.
    code = (
        "import sys\n"
        "from platform.run import main\n"
        f"rc = main([{str(BAD / 'x_negative_lr.yaml')!r}, '--dry-run'])\n"
        f"print(rc, sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "2 []", out.stdout + out.stderr
