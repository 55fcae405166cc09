"""The contract between trial, tracking and dashboards (trainables.contract), end to end.

A tiny study goes through the real ``platform.tracking`` tracker (no Ray: the callback's methods
are driven by hand with the configs the searcher would emit) and is read back through
``dashboards.data.load_study``: what the dashboards see is what tracking logged.
"""

from __future__ import annotations

import ast
import csv
import io
from pathlib import Path

import pytest
from mlflow import MlflowClient
from pydantic import ValidationError

from plans import plan_from_text
from platform.execute import select_rows
from platform.tracking import MLflowStudyCallback
from dashboards.data import PARAM_PREFIX, load_study
from dashboards.summary import select, usable
from trainables.config import TrialConfig
from trainables.contract import (EXPERIMENT_KIND_TRAINING, GRID_PARAM_PREFIX, META_KEY, Envelope, Tag,
                                 rounded, trial_params, with_envelope)
from trainables.selection import group_score, select_group

REPO = Path(__file__).resolve().parent.parent

STUDY = """
name: contract-test
dataset: {{name: toy_lt, imbalance_ratio: 10, val_per_class: 5,
          world: {{num_classes: 5, n_max: 40, test_per_class: 10, image_size: 16}}}}
backbones: [{{family: toy, pretrain: {{corpus_size: 1000, epochs: 3, width: 32, depth: 1}}}}]
finetune: {{peft: linear, head: linear, epochs: 2, batch_size: 64, augment: false}}
grid:
  dataset.imbalance_ratio: [10, 100]
  method.name: [ce, la]
seeds: [0, 1]
storage: {tmp}/storage
tracking_uri: sqlite:///{tmp}/mlflow.db
"""


class _Trial:
    """What the callback reads of a Tune trial."""

    def __init__(self, trial_id: str, config: dict) -> None:
        self.trial_id, self.config, self.checkpoint, self.num_failures = trial_id, config, None, 0


def _val(cell_index: int, group: int, seed: int) -> float:
    """A made-up but distinct objective: group 1 wins in even cells, group 0 in odd ones."""
    return 0.5 + 0.1 * ((group + cell_index) % 2) + 0.01 * seed + 0.001 * cell_index


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("contract")
    plan = plan_from_text(STUDY, tmp)
    callback = MLflowStudyCallback(plan.tracking_uri, plan, str(tmp / "storage" / plan.study.name))
    callback.setup()
    records = []
    for ci, cell in enumerate(plan.cells):
        for group in (0, 1):
            for seed in (0, 1):
                config = with_envelope(dict(cell.base_config, seed=seed),
                                       Envelope(cell.id, 1, group=group, optuna_trial=group, seed=seed))
                trial = _Trial(f"{cell.id}_{group}_{seed}", config)
                result = {"epoch": 2, "val/acc": _val(ci, group, seed), "test/acc": 0.4 + 0.1 * group,
                          "test/bal_acc": 0.123456789, "training_iteration": 2}
                callback.on_trial_start(0, [], trial)
                callback.on_trial_result(0, [], trial, result)
                callback.on_trial_complete(0, [], trial)
                records.append({"trial_id": trial.trial_id, "config": config, "status": "TERMINATED",
                                "result": result})
    rows = select_rows(plan, records)
    callback.finish(rows, failed_trials=0)
    return plan, rows, callback, load_study(plan.study.name, plan.tracking_uri)


def test_dashboards_read_the_grid_and_cell_values_tracking_logged(tracked):
    plan, rows, _, data = tracked
    assert data.grid == {"dataset.imbalance_ratio": [10, 100], "method.name": ["ce", "la"]}
    cells = data.cells.set_index("cell")
    for cell in plan.cells:
        for axis, value in cell.values.items():
            got = cells.loc[cell.id, PARAM_PREFIX + axis]
            assert got == value and isinstance(got, str) == isinstance(value, str)  # not a parsed string
    # every trial carries its cell's grid values, typed as the spec gave them
    assert data.trials["param.dataset.imbalance_ratio"].dtype == "Int64"
    assert set(data.trials["param.method.name"]) == {"ce", "la"}


def test_driver_and_dashboards_select_the_same_trials(tracked):
    _, rows, _, data = tracked
    cells = data.cells.set_index("cell")
    trials = usable(data.trials, "val/acc")
    for row in rows:
        assert row["selected"] and row["n_seeds"] == 2
        assert cells.loc[row["cell"], "selected_trials"] == row["trial_ids"]
        [sel] = select(trials[trials["cell"] == row["cell"]], [], "val/acc")
        assert sorted(sel.runs["trial_id"]) == sorted(row["trial_ids"])
        assert sorted(sel.runs["run_id"]) == sorted(cells.loc[row["cell"], "selected_runs"])


def test_run_names_are_readable_and_never_none(tracked):
    plan, _, _, data = tracked
    names = dict(zip(data.cells["cell"], data.cells["run_name"]))
    assert names[plan.cells[0].id] == f"{plan.cells[0].id} imbalance_ratio=10 method=ce"
    assert all("None" not in n for n in list(data.trials["run_name"]) + list(names.values()))
    assert all(n.startswith(f"{c} g") and " seed" in n for c, n in zip(data.trials["cell"], data.trials["run_name"]))


def test_each_trial_logs_only_the_params_its_method_reads(tracked):
    _, _, _, data = tracked
    params = data.trials.set_index("trial_id")
    ce, la = params.loc["c00_0_0"], params.loc["c01_0_0"]
    assert ce["param.method.name"] == "ce" and la["param.method.name"] == "la"
    assert ce.isna()["param.method.tau"] and not la.isna()["param.method.tau"]
    assert not any(c.startswith(("param.backdoor.", "param.pool.")) for c in data.param_columns)
    assert not any(c.startswith(f"param.{META_KEY}.") for c in data.param_columns)


def test_study_and_cell_runs_carry_grid_axes_selection_and_rounded_headlines(tracked, tmp_path):
    plan, rows, callback, data = tracked
    client = MlflowClient(plan.tracking_uri)
    assert "method.name" not in data.study_params  # swept by the grid: shown as grid.method.name
    assert data.study_params[GRID_PARAM_PREFIX + "method.name"] == "['ce', 'la']"
    experiment = client.get_experiment(data.experiment_id)
    assert experiment.tags[Tag.EXPERIMENT_KIND] == EXPERIMENT_KIND_TRAINING
    cell_run = client.get_run(data.cells["run_id"].iloc[0])
    assert cell_run.data.metrics["test/bal_acc"] == round(0.123456789, 4)
    assert set(data.trials["test/bal_acc"]) == {0.1235}  # trial runs too: 4 significant digits
    assert cell_run.data.tags[Tag.SELECTED_TRIAL] == ",".join(rows[0]["trial_ids"])
    table = client.download_artifacts(data.study_run_id, "summary/cells.csv", str(tmp_path))
    summary = list(csv.DictReader(io.StringIO(Path(table).read_text(encoding="utf-8"))))
    assert [r["cell"] for r in summary] == [c.id for c in plan.cells]
    assert summary[0]["selected_trials"] == " ".join(rows[0]["trial_ids"])
    assert summary[0]["method.name"] == "ce" and summary[0]["val/acc"] == f"{rows[0]['val/acc']:.4g}"


def test_rounded_keeps_four_significant_digits_and_whole_numbers_and_is_idempotent():
    assert rounded(0.18333333) == 0.1833 and rounded(0.000123456) == 0.0001235
    assert rounded(12345.6) == 12346.0 and rounded(-2.302585) == -2.303 and rounded(999.96) == 1000.0
    assert rounded(0.0) == 0.0 and rounded(7.0) == 7.0 and rounded(4096.0) == 4096.0
    rng = __import__("random").Random(0)
    for _ in range(20000):
        x = rng.uniform(-1, 1) * 10 ** rng.uniform(-8, 6)
        once = rounded(x)
        assert rounded(once) == once and abs(once - x) <= 5e-4 * abs(x)


@pytest.mark.parametrize("mode, groups, expected", [
    ("max", {0: [0.81236, 0.81236], 1: [0.81244, 0.81244]}, 0),  # equal keys: the first group
    ("max", {1: [0.81244], 0: [0.81236]}, 1),                     # ... in the order given
    ("max", {0: [0.81234, 0.81234], 1: [0.81226, 0.81236]}, 1),   # keys 0.8123 < 0.81235
    ("min", {0: [2.30261], 1: [2.30259]}, 0),                      # 2.303 both: a tie
    ("max", {0: [float("nan")], 1: [None, 0.1]}, 1),
])
def test_select_group_compares_rounded_values_and_breaks_ties_by_order(mode, groups, expected):
    assert select_group(groups, mode) == expected


def test_driver_and_report_agree_on_near_ties_below_the_rounding(tmp_path):
    """Two configurations closer than the 4th significant digit: the driver selects from Tune's
    full-precision results, the report from the rounded values tracking logged; both must select
    the same trials (and not the one full precision alone would pick: the case that used to flip)."""
    plan = plan_from_text(STUDY, tmp_path)
    callback = MLflowStudyCallback(plan.tracking_uri, plan, str(tmp_path / "storage" / plan.study.name))
    callback.setup()
    # cell 0: equal rounded keys (0.8124), full precision prefers group 1; cell 1: rounding reverses
    # the full-precision order (0.81234 > 0.81231, keys 0.8123 < 0.81235)
    values = {0: {0: [0.81236, 0.81236], 1: [0.81244, 0.81244]},
              1: {0: [0.81234, 0.81234], 1: [0.81226, 0.81236]}}
    records = []
    for ci, groups in values.items():
        cell = plan.cells[ci]
        for group, vals in groups.items():
            for seed, val in enumerate(vals):
                config = with_envelope(dict(cell.base_config, seed=seed),
                                       Envelope(cell.id, 1, group=group, optuna_trial=group, seed=seed))
                trial = _Trial(f"{cell.id}_{group}_{seed}", config)
                result = {"epoch": 1, "val/acc": val, "test/acc": 0.5 + 0.1 * group, "training_iteration": 1}
                callback.on_trial_start(0, [], trial)
                callback.on_trial_result(0, [], trial, result)
                callback.on_trial_complete(0, [], trial)
                records.append({"trial_id": trial.trial_id, "config": config, "status": "TERMINATED",
                                "result": result})
    rows = {r["cell"]: r for r in select_rows(plan, records)}
    callback.finish(list(rows.values()), failed_trials=0)
    data = load_study(plan.study.name, plan.tracking_uri)
    trials, cells = usable(data.trials, "val/acc"), data.cells.set_index("cell")
    for ci, groups in values.items():
        cell_id = plan.cells[ci].id
        full_precision = max(groups, key=lambda g: group_score(groups[g]))
        [sel] = select(trials[trials["cell"] == cell_id], [], "val/acc")
        driver = sorted(rows[cell_id]["trial_ids"])
        assert driver == sorted(sel.runs["trial_id"]) == sorted(cells.loc[cell_id, "selected_trials"])
        assert driver[0] != f"{cell_id}_{full_precision}_0"  # a near-tie that full precision decides otherwise
        # the logged trial metric is the rounded one; the driver's row keeps full precision
        assert set(sel.runs["val/acc"]) <= {rounded(v) for vals in groups.values() for v in vals}
        assert rows[cell_id]["val/acc"] == pytest.approx(group_score(groups[int(driver[0].split("_")[1])]), abs=1e-12)


def test_trial_params_of_a_posthoc_method_are_its_own_config_fields():
    # a post-hoc method's base is fine-tuned with the base's own defaults, so its fields are not logged
    config = {"method": {"name": "posthoc_la", "tau": 1.5, "base_method": "focal"},
              "backdoor": {"confounders": 3}, "seed": 0}
    assert trial_params(config) == {"method.name": "posthoc_la", "method.tau": 1.5,
                                    "method.base_method": "focal", "seed": 0}
    with pytest.raises(ValidationError, match="method 'posthoc_la' has no field 'gamma'.*tau, base_method"):
        TrialConfig.model_validate({"method": {**config["method"], "gamma": 2.0}})


def _imports(package: str) -> dict[str, set[str]]:
    """For each module file of ``package``: the top-level package names it imports."""
    out = {}
    for path in sorted((REPO / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        out[str(path.relative_to(REPO))] = names
    return out


@pytest.mark.parametrize("package, forbidden", [("trainables", {"platform", "dashboards"}),
                                                ("dashboards", {"platform"})])
def test_lower_packages_never_import_higher_ones(package, forbidden):
    offenders = {f: sorted(names & forbidden) for f, names in _imports(package).items() if names & forbidden}
    assert not offenders, f"{package} must not import {sorted(forbidden)}: {offenders}"


def test_a_compact_config_keeps_its_own_runtime_and_its_base_key_survives_a_moved_storage():
    """Resume from a moved storage folder: the plan's bases then carry other runtime paths; the key
    must not change, and each trial keeps the runtime it was started with (a config whose paths
    cannot be expressed as a difference falls back to the whole config, never a crash)."""
    from trainables.config import TrialConfig
    from trainables.contract import Envelope, compact_config, config_key, resolve_config, with_envelope

    base = TrialConfig().model_dump(mode="json")
    base["runtime"].update(cache_dir="/old/storage/_cache", zoo_dir="/old/storage/_zoo")
    trial = with_envelope({**base, "seed": 3}, Envelope("c00", 1, group=0, seed=3))
    compact = compact_config(trial, base)
    moved = {**base, "runtime": {**base["runtime"], "cache_dir": "/new/_cache", "zoo_dir": "/new/_zoo"}}
    assert config_key(moved) == config_key(base)
    assert resolve_config(compact, {config_key(moved): moved}) == trial
    # values two levels below a section the base holds as None cannot be set as path differences
    # (setting them raises AttributeError): the whole config comes back instead
    odd = {"dataset": None}
    nested = with_envelope({"dataset": {"world": {"seed": 1}}}, Envelope("c00", 1, group=0, seed=0))
    assert compact_config(nested, odd) == nested
