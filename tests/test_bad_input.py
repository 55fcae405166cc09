"""Malformed study files: every one in tests/bad_studies/ exits 2 with a message, never a traceback.

Each file starts with ``# expect: <text the error must contain>`` (the field, or the words that
name the problem); the message also names the file and line. The CLI runs in-process, with the
execution engine replaced by a stub that fails the test if a study starts; heavy libraries must
stay unimported until a study is valid.
"""

from __future__ import annotations

import subprocess
import sys
import types
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


@pytest.fixture
def no_study_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replace platform.execute with a stub whose run_study fails the test: a bad study must be
    rejected before anything starts (and Ray is not even imported)."""
    stub = types.ModuleType("platform.execute")

    def run_study(*args, **kwargs):
        raise AssertionError("the study was started; it should have been rejected")

    stub.run_study = run_study
    monkeypatch.setitem(sys.modules, "platform.execute", stub)


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_bad_study_exits_2_naming_the_problem_without_traceback(path: Path, capsys, no_study_starts) -> None:
    code, text = run_cli([str(path)], capsys)
    assert code == 2, f"exit {code}; output:\n{text}"
    assert "Traceback" not in text
    expected = expectation(path)
    assert expected and expected in text, f"{expected!r} missing from:\n{text}"
    assert f"{path}:" in text, text  # file:line: field = value: message


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_dry_run_reports_the_same_problem(path: Path, capsys) -> None:
    # A dry run rejects the study too, except that a study too big for *this* machine is still
    # planned (it may be meant for a cluster) with the problem printed as a warning.
    code, text = run_cli([str(path), "--dry-run"], capsys)
    assert expectation(path) in text and "Traceback" not in text, text
    machine_only = "warning: this machine cannot run the study" in text
    assert code == (0 if machine_only else 2), text


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


def test_non_utf8_file_is_reported_by_line_and_column(tmp_path: Path, capsys, no_study_starts) -> None:
    study = tmp_path / "latin1.yaml"
    study.write_bytes(b"name: latin\ndescription: ok\nmethod: {name: ce}  # caf\xe9\n")
    code, text = run_cli([str(study)], capsys)
    assert code == 2 and "Traceback" not in text
    assert f"{study}:3:" in text and "not UTF-8" in text and "0xe9" in text


def test_an_oversized_file_is_refused_before_it_is_parsed(tmp_path: Path, capsys, no_study_starts) -> None:
    from platform.yamlsource import MAX_STUDY_BYTES
    study = tmp_path / "big.yaml"
    study.write_text("name: big\ndescription: '" + "x" * MAX_STUDY_BYTES + "'\n")
    code, text = run_cli([str(study)], capsys)
    assert code == 2 and "MAX_STUDY_BYTES" in text and len(text) < 2000


def test_an_alias_bomb_gives_a_short_message(capsys, no_study_starts) -> None:
    code, text = run_cli([str(BAD / "x_alias_bomb.yaml")], capsys)
    assert code == 2 and len(text) < 2000, len(text)  # not the expanded structure


def test_a_recursive_alias_is_refused(tmp_path: Path, capsys, no_study_starts) -> None:
    study = tmp_path / "loop.yaml"
    study.write_text("name: loop\nx: &a [1, *a]\n")
    code, text = run_cli([str(study)], capsys)
    assert code == 2 and "Traceback" not in text and "recursive" in text
