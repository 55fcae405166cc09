"""`python -m platform.run`: exit codes, messages without tracebacks, the dry-run plan, the table.

The malformed studies run as real subprocesses (``python -m platform.run FILE --dry-run``), a few
at a time in parallel: each must exit 2 with a message naming the field and no traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from platform.plan import StudyOutcome
from platform.run import main

REPO = Path(__file__).resolve().parent.parent
SMOKE = "studies/smoke.yaml"
BAD = "tests/bad_studies"

# (case, argv after `python -m platform.run`, text the message must contain)
CASES = [
    ("unknown_key", [f"{BAD}/unknown_key.yaml"], "unknown field 'lrr'; did you mean 'lr'?"),
    ("wrong_type", [f"{BAD}/wrong_type.yaml"], "finetune.epochs = ten: must be an integer"),
    ("negative_imbalance_ratio", [f"{BAD}/negative_imbalance_ratio.yaml"],
     f"{BAD}/negative_imbalance_ratio.yaml:6: dataset.imbalance_ratio = -5: must be >= 1"),
    ("empty_grid_axis", [f"{BAD}/empty_grid_axis.yaml"],
     "grid.dataset.imbalance_ratio = []: an axis needs at least one value"),
    ("unknown_method", [f"{BAD}/unknown_method.yaml"], "method.name = lx: unknown method"),
    ("bad_distribution", [f"{BAD}/bad_distribution.yaml"], "search.space.finetune.lr"),
    ("yaml_syntax", [f"{BAD}/yaml_syntax.yaml"], f"{BAD}/yaml_syntax.yaml:6: YAML syntax error"),
    ("duplicate_cells", [f"{BAD}/duplicate_cells.yaml"], "grid.method.name = ce"),
    ("bad_grid_path", [f"{BAD}/bad_grid_path.yaml"],
     "grid.dataset.imbalance_ration: not a study path: no field 'imbalance_ration' in dataset; "
     "did you mean 'imbalance_ratio'?"),
    ("empty_search_choices", [f"{BAD}/empty_search_choices.yaml"],
     "search.space.method.tau = {\"categorical\": []}: no choices"),
    ("missing_file", [f"{BAD}/does_not_exist.yaml"], "does_not_exist.yaml: no such study file"),
    ("bad_set_path", [SMOKE, "--set", "finetune.lrr=0.1"],
     "--set finetune.lrr=0.1: finetune.lrr: bad --set path: no field 'lrr' in finetune; "
     "did you mean 'lr'?"),
    ("bad_set_value", [SMOKE, "--set", "finetune.epochs=-1"],
     "--set finetune.epochs=-1: finetune.epochs = -1: must be >= 0"),
    ("set_without_equals", [SMOKE, "--set", "finetune.epochs"], "expected PATH=VALUE"),
]


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, LTBIAS_OUTPUTS=str(REPO / "tests" / "_artifacts" / "cli_outputs"))
    return subprocess.run([sys.executable, "-m", "platform.run", *argv, "--dry-run"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def results() -> dict[str, subprocess.CompletedProcess]:
    """Every case's finished subprocess (two at a time: the machine's cores are shared)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = pool.map(_run, [argv for _, argv, _ in CASES])
        return {name: proc for (name, _, _), proc in zip(CASES, done)}


@pytest.mark.parametrize("name,argv,expected", CASES, ids=[c[0] for c in CASES])
def test_invalid_input_exits_2_with_a_message_naming_the_field(results, name, argv, expected):
    proc = results[name]
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert expected in proc.stderr, proc.stderr
    assert proc.stdout == ""  # nothing of a plan is printed for a bad study


def test_the_ten_bad_study_files_are_distinct_and_all_covered():
    ours = {p.name for p in (REPO / BAD).glob("*.yaml") if not p.name.startswith("x_")}
    covered = {Path(argv[0]).name for _, argv, _ in CASES if argv[0].startswith(BAD)}
    assert len(ours) == 10 and ours <= covered
    texts = [(REPO / BAD / n).read_text() for n in ours]
    assert len(set(texts)) == 10


def test_dry_run_prints_cells_trials_stages_and_resources_without_ray_or_mlflow():
    code = ("import sys\nfrom platform.run import main\n"
            f"rc = main([{SMOKE!r}, '--dry-run', '--set', 'seeds=[0, 1]'])\n"
            "print('heavy', sorted(m for m in ('ray', 'mlflow', 'optuna') if m in sys.modules))\n"
            "sys.exit(rc)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "c00   train       6" in out and "c01   train       6" in out  # 3 samples x 2 seeds
    assert "2 replicate(s) = 1 world x 1 pre-training x 2 fine-tuning seed(s)" in out
    assert "method.name=ce" in out and "method.name=la" in out
    assert "3 x finetune.lr" in out
    assert "stage 1 prerequisites 0" in out and "total trials: 12" in out
    assert "resources per trial: cpu 1, gpu 0" in out
    assert "dry run: nothing was started" in out
    assert "heavy []" in out


def test_location_flags_override_the_study(capsys, tmp_path):
    code = main([SMOKE, "--dry-run", "--storage", str(tmp_path / "runs"), "--tracking-uri",
                 "http://127.0.0.1:5000", "--max-concurrent", "3"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"storage:  {tmp_path / 'runs'}" in out
    assert "tracking: http://127.0.0.1:5000" in out and "max concurrent: 3" in out


def test_a_bad_location_flag_is_named_in_the_error(capsys):
    assert main([SMOKE, "--dry-run", "--max-concurrent", "-2"]) == 2
    assert "--max-concurrent -2: max_concurrent = -2: must be >= 0" in capsys.readouterr().err


def _no_ray(monkeypatch) -> list:
    """Ray's background start (``platform.raystart``) records its address instead of attaching."""
    from platform import raystart

    addresses: list = []

    def attach(address):
        addresses.append(address)
        return False

    monkeypatch.setattr(raystart, "_init_ray", attach)
    return addresses


def _fake_engine(monkeypatch, failed: int) -> list:
    """Install a stand-in platform.execute whose run_study records its arguments (and no Ray)."""
    _no_ray(monkeypatch)
    calls: list = []

    def run_study(plan, args):
        calls.append((plan, args))
        rows = [{"cell": c.id, "label": c.label, "best_config": {"finetune.lr": 0.0123},
                 "metric": 0.5 + i / 10, "test/acc": 0.61, "test/d_many": 0.9, "test/d_medium": 0.6,
                 "test/d_few": float("nan"), "test/p_many": 0.7, "test/p_medium": 0.6,
                 "test/acc_std": 0.025, "n_seeds": 3}
                for i, c in enumerate(plan.cells)]
        rows[0].update({"gain/test/acc": 0.03, "gain/test/acc_std": 0.01, "gain/test/acc_lo": 0.005,
                        "gain/test/acc_hi": 0.055, "baseline/best_single/acc": 0.58})
        prior = [{"backbone": "m0 ir10 prior0", "n": 3, "prior/spearman": 0.8, "prior/spearman_std": 0.05,
                  "prior/tv": 0.1, "prior/tv_std": 0.02},
                 {"backbone": "m1 ir10 prior1", "n": 1, "prior/spearman": 0.7, "prior/spearman_std": float("nan"),
                  "prior/tv": 0.2, "prior/tv_std": float("nan")}]
        return StudyOutcome(rows=rows, failed_trials=failed, total_trials=plan.total_trials,
                            study_run_id="abc123", tracking_uri=plan.tracking_uri, prior_rows=prior)

    module = types.ModuleType("platform.execute")
    module.run_study = run_study
    monkeypatch.setitem(sys.modules, "platform.execute", module)
    return calls


def test_run_prints_the_results_table_and_the_mlflow_ui_commands(monkeypatch, capsys, tmp_path):
    calls = _fake_engine(monkeypatch, failed=0)
    code = main([SMOKE, "--storage", str(tmp_path), "--address", "auto", "--resume"])
    out = capsys.readouterr().out
    assert code == 0
    plan, args = calls[0]
    assert args.address == "auto" and args.resume and not args.dry_run
    assert [c.id for c in plan.cells] == ["c00", "c01"]
    header = [line for line in out.splitlines() if line.startswith("cell ") and "best configuration" in line][-1]
    for column in ("best configuration", "val/acc", "test/acc", "d_many", "d_medium", "d_few",
                   "p_many", "p_medium", "p_few"):
        assert column in header
    row = [line for line in out.splitlines() if line.startswith("c01 ")][-1]
    assert "finetune.lr=0.0123" in row and "60.0" in row and "nan" in row  # percent
    assert "61.0 ± 2.5" in row  # mean ± sample s.d. of the replicates
    assert row.rstrip().endswith("-")  # p_few was not reported
    ens = [line for line in out.splitlines() if line.startswith("c00 ")][-1]
    assert "+3.0 ± 1.0 [+0.5, +5.5]" in ens and "58.0" in ens  # gain over the best single model
    assert "m0 ir10 prior0" in out and "0.8000 ± 0.0500" in out  # q_hat error per backbone
    one = [line for line in out.splitlines() if line.startswith("m1 ir10 prior1")][-1]
    assert "0.7000" in one and "0.2000" in one and "nan" not in one  # n = 1: no s.d. to show
    assert "python -m platform.ui" in out
    assert f"mlflow ui --backend-store-uri {plan.tracking_uri} --workers 1 --host 127.0.0.1" in out


def test_failed_trials_beyond_retries_exit_1(monkeypatch, capsys):
    _fake_engine(monkeypatch, failed=2)
    assert main([SMOKE, "--address", "auto"]) == 1
    assert "failed beyond retries: 2" in capsys.readouterr().out


def test_an_input_error_from_the_engine_exits_2_without_traceback(monkeypatch, capsys):
    from platform.errors import PlatformInputError

    def run_study(plan, args):
        raise PlatformInputError("study 'smoke' already has results; pass --resume")

    module = types.ModuleType("platform.execute")
    module.run_study = run_study
    monkeypatch.setitem(sys.modules, "platform.execute", module)
    addresses = _no_ray(monkeypatch)
    assert main([SMOKE, "--address", "auto"]) == 2
    assert addresses == ["auto"]  # Ray's start began (in the background) and was ended
    err = capsys.readouterr().err
    assert "pass --resume" in err and "Traceback" not in err
