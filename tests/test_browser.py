"""Open the study report and the MLflow UI in a real headless browser (Debian chromium + selenium).

Runs the real smoke study (studies/smoke.yaml, widened by --set to two imbalance ratios, two seeds
and a searched backdoor cell so that every chart of the report has data), writes its report with
``python -m platform.report``, then checks in Chromium: no JavaScript errors, every chart has
rendered data marks (or, for a search without variation, an explicit empty state), the trial
table lists every trial; and, with ``python -m platform.ui`` serving the same store, that the MLflow
UI lists the study run, its cells and its trials. Screenshots go to tests/_artifacts/.
Install the browser with tests/install_browser.sh.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium missing: run tests/install_browser.sh")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from dashboards.data import StudyData, experiment_url, load_study  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(__file__).resolve().parent / "_artifacts"
#: The screenshots docs/ shows (README, ARCHITECTURE): rewritten by every run of this test.
DOCS = REPO / "docs"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
SMOKE_OVERRIDES = [
    "grid.dataset.imbalance_ratio=[5,10]",
    "grid.method.name=[ce,la,backdoor]",
    "backdoor.confounders=2",
    "search.space={backdoor.confounders: {int: [1, 2]}, backdoor.weighting: {categorical: [uniform, fitted]}}",
    "search.where={method.name: [backdoor]}",
    "search.num_samples=3",
    "seeds=[0,1]",
]
#: Charts that must show data for this study (search charts may be honest empty states).
REQUIRED_CHARTS = ["acc-vs-ir", "d-groups", "p-groups", "dp-heatmap-0", "acc-vs-m", "acc-vs-weighting"]
#: Requests the MLflow UI itself makes that a server without authentication answers with 404.
MLFLOW_UI_EXPECTED_404 = ("/ajax-api/2.0/mlflow/users/current",)

if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("chromium and chromedriver are not installed: run tests/install_browser.sh",
                allow_module_level=True)


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    res = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True,
                         timeout=timeout, env=env)
    assert res.returncode == 0, f"{' '.join(args)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[StudyData, Path]:
    """The widened smoke study, run for real, and its report file."""
    root = tmp_path_factory.mktemp("smoke")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    sets = [a for o in SMOKE_OVERRIDES for a in ("--set", o)]
    _run("platform.run", "studies/smoke.yaml", "--storage", str(root / "storage"), "--tracking-uri", uri, *sets)
    report = root / "report.html"
    _run("platform.report", "studies/smoke.yaml", "--tracking-uri", uri, "--out", str(report), timeout=300)
    return load_study("smoke", uri), report


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    """Headless Chromium with the browser console log captured."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1000",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def _console(driver: webdriver.Chrome, name: str) -> list[dict]:
    """The console entries since the last call, also kept as tests/_artifacts/<name>.console.json."""
    entries = driver.get_log("browser")
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"{name}.console.json").write_text(json.dumps(entries, indent=1), encoding="utf-8")
    return entries


def _screenshot(driver: webdriver.Chrome, name: str, docs_name: str | None = None,
                max_height: int = 12000) -> Path:
    """A full-page screenshot (the window grown to the page's height) in tests/_artifacts/, and
    copied to docs/<docs_name> when given."""
    ARTIFACTS.mkdir(exist_ok=True)
    height = driver.execute_script("return Math.max(document.body.scrollHeight, 1000)")
    driver.set_window_size(1400, min(int(height) + 40, max_height))
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    if docs_name:
        shutil.copyfile(path, DOCS / docs_name)
    return path


def test_report_renders_every_chart_without_javascript_errors(browser: webdriver.Chrome,
                                                              smoke: tuple[StudyData, Path]) -> None:
    data, report = smoke
    browser.get_log("browser")  # drop entries of earlier pages
    browser.get(report.as_uri())
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return document.readyState") == "complete")
    figures = browser.execute_script("""
        return Array.from(document.querySelectorAll('figure.chart')).map(f => ({
            id: f.dataset.chart, points: Number(f.dataset.points),
            marks: Array.from(f.querySelectorAll('svg .pt')).filter(m => {
                const r = m.getBoundingClientRect(); return r.width > 0 || r.height > 0; }).length,
            empty: (f.querySelector('.empty-state') || {}).textContent || ''}));""")
    _screenshot(browser, "report", "report.png", max_height=3000)  # docs: the table and first charts
    by_id = {f["id"]: f for f in figures}
    for chart in REQUIRED_CHARTS:
        assert by_id[chart]["points"] > 0, f"{chart}: no data ({by_id[chart]['empty']})"
    assert any(f["id"].startswith("parallel-") and f["points"] > 0 for f in figures)
    for f in figures:
        # Every data point is a visible mark; a chart without data says why instead of staying blank.
        assert f["marks"] == f["points"], f
        assert f["points"] > 0 or f["empty"].strip(), f
    rows = browser.find_elements(By.CSS_SELECTOR, "#trial-table tbody tr")
    assert len(rows) == len(data.trials)
    links = {a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "#trial-table a")}
    assert all(f"/#/experiments/{data.experiment_id}/runs/{r}" in " ".join(links) for r in data.trials["run_id"])
    # The table's filter is live JavaScript: typing narrows the rows.
    browser.find_element(By.ID, "trial-filter").send_keys("backdoor")
    shown = [r for r in rows if r.is_displayed()]
    assert 0 < len(shown) < len(rows) and all("backdoor" in r.text for r in shown)
    errors = [e for e in _console(browser, "report") if e["level"] == "SEVERE"]
    assert not errors, errors


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"python -m platform.ui exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=3) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"MLflow server at {url} not healthy after {timeout} s")


def _expand_nested_runs(driver: webdriver.Chrome) -> None:
    """Click each run's expander once (study run, then cell runs) so that nested runs are listed."""
    expanded: set[str] = set()
    for _ in range(4):  # study > cell > trial: the deepest level needs two rounds
        clicked = False
        for row in driver.find_elements(By.CSS_SELECTOR, "div[role='row']"):
            buttons = row.find_elements(By.CSS_SELECTOR, "button[data-component-id*='runnamecellrenderer']")
            links = row.find_elements(By.CSS_SELECTOR, "a[href*='/runs/']")
            if buttons and links and links[0].get_attribute("href") not in expanded:
                expanded.add(links[0].get_attribute("href"))
                buttons[0].click()
                clicked = True
                time.sleep(0.3)
        if not clicked:
            return


def _readable_runs_table(driver: webdriver.Chrome, metrics: tuple[str, ...] = ("val/acc", "test/acc")) -> None:
    """What a researcher does first in the runs table: close the assistant panel, show the headline
    metric columns instead of Dataset/Source/Models, widen the run names. Best effort: the MLflow UI's
    markup is not an API, so a missing control only leaves the default view."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    try:
        for close in driver.find_elements(By.CSS_SELECTOR, "button[data-component-id='mlflow.assistant.chat_panel.close']"):
            close.click()
        for name in ("Dataset", "Source", "Models", *metrics):  # each a toggle in the Columns menu
            searches = driver.find_elements(By.CSS_SELECTOR, "input[placeholder='Search columns']")
            if not searches:
                [b for b in driver.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Columns"][0].click()
                time.sleep(0.5)
                searches = driver.find_elements(By.CSS_SELECTOR, "input[placeholder='Search columns']")
            searches[0].send_keys(Keys.CONTROL, "a")
            searches[0].send_keys(name)
            time.sleep(0.5)
            driver.execute_script(
                "const t = arguments[0]; const hit = Array.from(document.querySelectorAll('label, span'))"
                ".find(e => e.textContent.trim() === t && e.closest('[role=\"dialog\"], [role=\"menu\"],"
                " [data-radix-popper-content-wrapper]')); if (hit) { hit.click(); }", name)
            time.sleep(0.5)
        for search in driver.find_elements(By.CSS_SELECTOR, "input[placeholder='Search columns']"):
            search.send_keys(Keys.ESCAPE)
        time.sleep(0.5)
        handle = driver.execute_script(
            "const h = Array.from(document.querySelectorAll('.ag-header-cell'))"
            ".find(e => e.textContent.trim() === 'Run Name'); return h && h.querySelector('.ag-header-cell-resize');")
        if handle is not None:
            ActionChains(driver).drag_and_drop_by_offset(handle, 260, 0).perform()
    except WebDriverException:
        pass


def test_mlflow_ui_lists_the_study_its_cells_and_trials(browser: webdriver.Chrome,
                                                        smoke: tuple[StudyData, Path], tmp_path: Path) -> None:
    data, _ = smoke
    port = _free_port()
    log = (tmp_path / "ui.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "platform.ui", "--port", str(port),
                             "--tracking-uri", data.tracking_uri],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, proc)
        browser.set_window_size(1400, 2400)  # the runs grid renders only the rows in view
        browser.get_log("browser")
        browser.get(experiment_url(url, data.experiment_id))  # opens the runs table, not Traces
        WebDriverWait(browser, 90).until(
            lambda d: data.study_run_name in d.find_element(By.TAG_NAME, "body").text)
        _expand_nested_runs(browser)
        expected = {data.study_run_name, *data.cells["run_name"], *data.trials["run_name"]}
        WebDriverWait(browser, 30).until(lambda d: expected <= {
            e.text for e in d.find_elements(By.CSS_SELECTOR, "a[href*='/runs/'] span")})
        _readable_runs_table(browser)
        _screenshot(browser, "mlflow_runs", "mlflow_ui.png", max_height=2400)
        # The study run's page lists the report logged as an artifact.
        browser.get(f"{url}/#/experiments/{data.experiment_id}/runs/{data.study_run_id}/artifacts")
        WebDriverWait(browser, 60).until(lambda d: "report" in d.find_element(By.TAG_NAME, "body").text)
        _screenshot(browser, "mlflow_study_run_artifacts")
        errors = [e for e in _console(browser, "mlflow_ui") if e["level"] == "SEVERE"
                  and not (e.get("source") == "network" and any(p in e["message"] for p in MLFLOW_UI_EXPECTED_404))]
        assert not errors, errors
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
