"""The study report, the Parquet export and the UI command, against a real (small) MLflow study.

The study is built by tests/browser/study_fixture.py: numpy trials scored by trainables.metrics,
logged with the layout of platform.tracking, one Optuna study per cell in an RDB.
"""

from __future__ import annotations

import dataclasses
import math
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from browser.study_fixture import FakeStudy, build_fake_study
from dashboards.cells import analyse_cell
from dashboards.data import TRIAL_COLUMNS, StudyData, coerce_param_column, load_study
from dashboards.report import build_report
from dashboards.summary import METHOD, select, usable
from platform.ui import server_command

REPO = Path(__file__).resolve().parent.parent
#: Charts the fake study (ce, la, backdoor over two imbalance ratios) must fill.
CHARTS_WITH_DATA = ["acc-vs-ir", "d-groups", "p-groups", "dp-heatmap-0", "dp-heatmap-1", "dp-heatmap-2",
                    "acc-vs-m", "acc-vs-weighting", "gain", "importance-0", "parallel-0"]


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> FakeStudy:
    return build_fake_study(tmp_path_factory.mktemp("study"))


@pytest.fixture(scope="module")
def data(fake: FakeStudy) -> StudyData:
    return load_study(fake.name, fake.tracking_uri)


@pytest.fixture(scope="module")
def html(data: StudyData, fake: FakeStudy) -> str:
    return build_report(data, optuna_storage=fake.optuna_storage, ui_url="http://mlflow.example:5000")


class _Figures(HTMLParser):
    """Each <figure class="chart">: its data-points, the .pt marks inside, and an empty-state flag."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: dict[str, dict] = {}
        self._current: dict | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "figure" and "chart" in classes:
            self._current = {"points": int(a["data-points"] or -1), "marks": 0, "empty": False, "svg": False}
            self.figures[a["data-chart"] or ""] = self._current
        elif self._current is not None:
            self._current["marks"] += "pt" in classes
            self._current["empty"] |= "empty-state" in classes
            self._current["svg"] |= tag == "svg"

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self._current = None


def _figures(html: str) -> dict[str, dict]:
    parser = _Figures()
    parser.feed(html)
    return parser.figures


def test_load_study_takes_latest_study_run_with_its_cells_and_trials(data: StudyData, fake: FakeStudy) -> None:
    assert data.study_run_id == fake.study_run_id  # not the older, killed execution
    assert sorted(data.cells["cell"]) == sorted(fake.cells)
    assert set(data.trials["run_id"]) == set(fake.trial_run_ids)
    assert list(data.trials.columns[:len(TRIAL_COLUMNS)]) == TRIAL_COLUMNS
    failed = data.trials[data.trials["status"] == "FAILED"]
    assert len(failed) == 1 and failed["error"].iloc[0].startswith("RuntimeError: injected fault")


def test_params_are_typed_back_from_mlflow_strings(data: StudyData) -> None:
    t = data.trials
    assert t["param.dataset.imbalance_ratio"].dtype == "float64"
    assert t["param.backdoor.confounders"].dtype == "Int64"
    assert t["param.finetune.augment"].dtype == "boolean"
    assert t["param.method.name"].dtype == "string"
    assert t["seed"].dtype == "Int64" and t["seed"].isna().any()  # backdoor trials evaluate all seeds
    assert str(coerce_param_column(pd.Series(["1", "None", "3"])).dtype) == "Int64"
    assert coerce_param_column(pd.Series(["0.5", "2"])).tolist() == [0.5, 2.0]
    assert coerce_param_column(pd.Series(["[0, 1]", "None"])).isna().tolist() == [False, True]


def test_selection_is_on_validation_and_spread_is_over_seeds(data: StudyData) -> None:
    trials = usable(data.trials, "val/acc")
    cell = trials[trials[METHOD] == "la"]["cell"].iloc[0]
    frame = trials[trials["cell"] == cell]
    # By hand: the proposal (Optuna trial) with the best mean val/acc over its seeds.
    best = frame.groupby("optuna_trial")["val/acc"].mean().idxmax()
    runs = frame[frame["optuna_trial"] == best]
    [sel] = select(frame, [METHOD], "val/acc")
    stat = sel.stat("test/acc")
    assert stat.n == 2 == len(runs)
    assert stat.mean == pytest.approx(runs["test/acc"].mean() * 100)
    assert stat.std == pytest.approx(runs["test/acc"].std(ddof=1) * 100)
    # A backdoor run evaluated both seeds itself: its reported _std is the spread.
    bd = trials[trials[METHOD] == "backdoor"]
    [sel] = select(bd[bd["cell"] == bd["cell"].iloc[0]], [METHOD], "val/acc")
    assert sel.stat("test/acc").std == pytest.approx(sel.runs["test/acc_std"].iloc[0] * 100)


def test_every_chart_has_as_many_marks_as_data_points(html: str) -> None:
    figures = _figures(html)
    for name in CHARTS_WITH_DATA:
        assert figures[name]["points"] > 0, f"chart {name} has no data"
    for name, fig in figures.items():
        assert fig["marks"] == fig["points"], name
        assert fig["svg"] != fig["empty"], f"chart {name} must be either a chart or an empty state"


def test_charts_without_data_show_an_empty_state(data: StudyData, fake: FakeStudy) -> None:
    no_backdoor = dataclasses.replace(data, trials=data.trials[data.trials[METHOD] != "backdoor"])
    figures = _figures(build_report(no_backdoor, optuna_storage=fake.optuna_storage))
    for name in ("acc-vs-m", "acc-vs-weighting"):
        assert figures[name] == {"points": 0, "marks": 0, "empty": True, "svg": False}
    assert figures["acc-vs-ir"]["points"] > 0


def test_report_is_self_contained_and_links_runs_to_the_mlflow_ui(html: str, data: StudyData) -> None:
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=[\"']?https?:|@import|url\(https?:", html)
    external = set(re.findall(r"https?://[^\s\"'<>]+", html)) - {"http://www.w3.org/2000/svg"}
    assert all(u.startswith("http://mlflow.example:5000/#/experiments/") for u in external), external
    for run_id in data.trials["run_id"]:
        assert f"http://mlflow.example:5000/#/experiments/{data.experiment_id}/runs/{run_id}" in html


def test_importances_come_from_the_cells_optuna_study(data: StudyData, fake: FakeStudy) -> None:
    trials = usable(data.trials, "val/acc")
    cell = trials[trials[METHOD] == "backdoor"]["cell"].iloc[0]
    frame = trials[trials["cell"] == cell]
    from_rdb = analyse_cell(fake.name, cell, frame, "val/acc", "max", fake.optuna_storage)
    assert f"Optuna study '{fake.name}/{cell}'" in from_rdb.note
    assert set(from_rdb.importances or {}) <= {"backdoor.confounders", "backdoor.weighting"}
    assert math.isclose(sum((from_rdb.importances or {"": 1.0}).values()), 1.0)
    rebuilt = analyse_cell(fake.name, cell, frame, "val/acc", "max", None)
    assert "rebuilt from MLflow runs" in rebuilt.note
    one = analyse_cell(fake.name, cell, frame.iloc[:1], "val/acc", "max", None)
    assert one.importances is None and "need at least 2" in one.note


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_report_cli_writes_html_and_logs_it_to_the_study_run(fake: FakeStudy, tmp_path: Path) -> None:
    out = tmp_path / "custom-name.html"
    res = _cli("platform.report", "--study", fake.name, "--tracking-uri", fake.tracking_uri,
               "--optuna-storage", fake.optuna_storage, "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert "<figure class=\"chart\"" in out.read_text(encoding="utf-8")
    logged = [a.path for a in MlflowClient(fake.tracking_uri).list_artifacts(fake.study_run_id, "report")]
    assert logged == ["report/report.html"]


def test_export_cli_writes_one_typed_row_per_trial(fake: FakeStudy, data: StudyData, tmp_path: Path) -> None:
    out = tmp_path / "study.parquet"
    res = _cli("platform.export", "--study", fake.name, "--tracking-uri", fake.tracking_uri, "--out", str(out))
    assert res.returncode == 0, res.stderr
    table = pd.read_parquet(out)
    assert len(table) == len(fake.trial_run_ids) and set(table["run_id"]) == set(fake.trial_run_ids)
    assert list(table.columns[:3 + len(TRIAL_COLUMNS)]) == ["study", "experiment_id", "study_run_id", *TRIAL_COLUMNS]
    assert (table["study"] == fake.name).all() and (table["study_run_id"] == fake.study_run_id).all()
    assert table["param.dataset.imbalance_ratio"].dtype == "float64"
    assert str(table["param.backdoor.confounders"].dtype) == "Int64"
    assert {"val/acc", "test/acc", "test/dp_few_few", "test/acc_std"} <= set(table.columns)
    finished = table[table["status"] == "FINISHED"]
    assert finished["test/acc"].notna().all() and finished["test/acc"].between(0, 1).all()
    meta = pq.read_schema(out).metadata
    assert meta[b"ltbias.export_version"] == b"2" and meta[b"ltbias.study"] == fake.name.encode()


def test_clis_name_the_missing_study_and_exit_2(fake: FakeStudy) -> None:
    for module in ("platform.report", "platform.export"):
        res = _cli(module, "--study", "no-such-study", "--tracking-uri", fake.tracking_uri)
        assert res.returncode == 2
        assert "no MLflow experiment named 'no-such-study'" in res.stderr and fake.name in res.stderr


def test_ui_serves_the_store_on_localhost_with_one_worker(fake: FakeStudy, tmp_path: Path) -> None:
    cmd = server_command(fake.tracking_uri, "127.0.0.1", 5123)
    assert cmd[cmd.index("--backend-store-uri") + 1] == fake.tracking_uri
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--workers") + 1] == "1"
    res = _cli("platform.ui", "--dry-run", "--port", "5123", "--tracking-uri", fake.tracking_uri)
    assert res.returncode == 0 and "http://127.0.0.1:5123" in res.stdout
    missing = _cli("platform.ui", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}")
    assert missing.returncode == 2 and "no database at" in missing.stderr


def test_report_of_a_study_run_without_trials_is_all_empty_states(data: StudyData) -> None:
    fresh = dataclasses.replace(data, trials=pd.DataFrame(columns=TRIAL_COLUMNS), param_columns=[], metric_columns=[])
    html = build_report(fresh)
    figures = _figures(html)
    assert figures and all(f["points"] == 0 and f["empty"] for f in figures.values())
    assert "This study run has no trial runs yet." in html


def test_cell_table_names_each_settings_winner_its_margin_and_links_the_selected_trials(html: str, data: StudyData) -> None:
    table = re.search(r'<table class="trials" id="cell-table".*?</table>', html, re.S).group(0)
    rows = re.findall(r'<tr class="cell-row( winner)?">(.*?)</tr>', table, re.S)
    trials = usable(data.trials, "val/acc")
    assert len(rows) == trials["cell"].nunique() == 6  # 2 imbalance ratios x 3 methods
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", r[1], re.S) for r in rows]
    by_ir: dict[str, list[tuple[bool, float, float]]] = {}
    for (winner, _), tds in zip(rows, cells):
        assert tds[1] in ("ce", "la", "backdoor")  # the method leads the grid columns
        ir, test, margin = tds[2], float(tds[4].split()[0]), float(tds[5])
        by_ir.setdefault(ir, []).append((bool(winner), test, margin))
    for ir, entries in by_ir.items():
        assert sum(w for w, _, _ in entries) == 1, ir  # one winner per setting
        best, second = sorted((t for _, t, _ in entries), reverse=True)[:2]
        assert [m for w, _, m in entries if w] == [pytest.approx(best - second, abs=0.011)]
    # the winner's selected trial links to the run the selection picked
    [sel] = select(trials[trials["cell"] == re.search(r">(c\d\d)</a>", rows[0][1]).group(1)], [], "val/acc")
    assert all(f"/runs/{r}?" in rows[0][1] for r in sel.runs["run_id"])
    assert "(n=2)" in cells[2][4]  # a backdoor run evaluated both seeds itself and says so
