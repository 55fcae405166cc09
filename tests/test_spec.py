"""The study spec: loading, defaults, error messages (file:line: path = value: expectation), --set."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from platform import paths
from platform.dotpath import get_path, resolve_path, set_path, split_path
from platform.errors import SpecError
from platform.space import check_distribution
from platform.spec import Study, TrialSections
from platform.studyfile import load_study, parse_study

REPO = Path(__file__).resolve().parent.parent


def study(text: str, *overrides: str, file: str = "s.yaml") -> Study:
    return parse_study(textwrap.dedent(text), file, overrides)


def error(text: str, *overrides: str, file: str = "s.yaml") -> str:
    with pytest.raises(SpecError) as e:
        study(text, *overrides, file=file)
    return str(e.value)


@pytest.fixture(autouse=True)
def _outputs(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.OUTPUTS_ENV, str(tmp_path / "outputs"))


def test_smoke_study_loads_with_resolved_locations(tmp_path):
    s = load_study(REPO / "studies" / "smoke.yaml")
    assert s.name == "smoke" and s.grid == {"method.name": ["ce", "la"]}
    assert s.search.space == {"finetune.lr": {"logfloat": [0.001, 0.1]}}
    assert s.tracking_uri == f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}"
    assert s.storage == str(tmp_path / "outputs" / "ray_results")
    assert s.source is not None and s.source.file.endswith("smoke.yaml")


def test_error_names_file_line_field_value_and_expectation():
    text = """\
        name: x
        dataset:
          name: toy_lt
          imbalance_ratio: -5
        """
    assert error(text, file="studies/x.yaml") == (
        "studies/x.yaml:4: dataset.imbalance_ratio = -5: must be >= 1 "
        "(n_max / n_min of the training split)")


def test_unknown_key_suggests_the_closest_field_at_its_line():
    msg = error("name: x\nfinetune:\n  epochs: 1\n  lrr: 0.1\n")
    assert msg.startswith("s.yaml:4: finetune.lrr = 0.1: unknown field 'lrr'; did you mean 'lr'?")


def test_every_problem_is_reported_not_just_the_first():
    msg = error("name: x\nfinetune: {epochs: -1, batch_size: 0}\n")
    assert "finetune.epochs = -1" in msg and "finetune.batch_size = 0" in msg


def test_yaml_duplicate_key_is_an_error_not_a_silent_overwrite():
    msg = error("name: x\nseeds: [0]\nseeds: [1]\n")
    assert "s.yaml:3: seeds: key 'seeds' appears twice (first on line 2)" in msg


def test_yaml_is_loaded_safely():
    msg = error("name: !!python/object/apply:os.system ['true']\n")
    assert "YAML syntax error" in msg and "python/object/apply" in msg


def test_name_must_be_a_slug():
    assert "name = Has Spaces: must be a slug" in error("name: Has Spaces\n")


def test_set_overrides_any_field_before_validation_with_yaml_values():
    s = study("name: x\n", "finetune.lr=1e-3", "backbones=[{name: a}, {name: b}]",
              "grid.method.name=[ce, la]", "backbones.*.pretrain.epochs=2", "seeds=[3, 4]")
    assert s.finetune.lr == pytest.approx(1e-3)
    assert [b.name for b in s.backbones] == ["a", "b"]
    assert all(b.pretrain.epochs == 2 for b in s.backbones)
    assert s.grid == {"method.name": ["ce", "la"]} and s.seeds == [3, 4]


def test_bad_set_path_names_the_flag_and_suggests_a_field():
    msg = error("name: x\n", "finetune.batchsize=3")
    assert "--set finetune.batchsize=3" in msg and "did you mean 'batch_size'?" in msg


def test_invalid_set_value_is_placed_at_the_flag_not_a_file_line():
    msg = error("name: x\nfinetune: {lr: 0.1}\n", "finetune.lr=-1")
    assert msg == "s.yaml: --set finetune.lr=-1: finetune.lr = -1: must be > 0"


def test_set_index_beyond_the_list_is_rejected():
    assert "index 5 is out of range" in error("name: x\nbackbones: [{name: a}]\n", "backbones.5.name=a")
    assert "set the whole list instead" in error("name: x\n", "backbones.0.name=a")


@pytest.mark.parametrize("dist,expected", [
    ({"int": [1, 4]}, {"int": [1, 4]}),
    ({"float": [0, 1]}, {"float": [0.0, 1.0]}),
    ({"logfloat": [1e-4, 0.1]}, {"logfloat": [1e-4, 0.1]}),
    ({"categorical": ["a", 1]}, {"categorical": ["a", 1]}),
    ({"subset": 3}, {"subset": 3}),
    ({"simplex": 2}, {"simplex": 2}),
])
def test_valid_distributions(dist, expected):
    assert check_distribution(dist) == expected


@pytest.mark.parametrize("dist,words", [
    ({"int": [4, 1]}, "lo < hi"), ({"int": [1.5, 3]}, "integers"), ({"logfloat": [0, 1]}, "0 < lo"),
    ({"categorical": []}, "no choices"), ({"categorical": [1, 1]}, "given twice"),
    ({"subset": 0}, "N >= 1"), ({"simplx": 3}, "did you mean 'simplex'"),
    ({"int": [1, 2], "float": [0, 1]}, "one-key mapping"), ("logfloat", "one-key mapping"),
])
def test_invalid_distributions_say_what_is_expected(dist, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(")):
        check_distribution(dist)


def test_bad_distribution_in_a_study_names_the_search_path_and_line():
    msg = error("name: x\nsearch:\n  space:\n    finetune.lr: {logfloat: [0, 1]}\n")
    assert msg.startswith("s.yaml:4: search.space.finetune.lr = {\"logfloat\": [0, 1]}: lo (0) must be > 0")


def test_search_path_must_exist_in_the_trial_config():
    msg = error("name: x\nsearch:\n  space:\n    finetune.learning_rat: {float: [0, 1]}\n")
    assert "search.space.finetune.learning_rat: not a trial path" in msg


def test_search_values_are_validated_in_each_searched_cell():
    msg = error("""\
        name: x
        backbones: [{name: a}, {name: b}]
        method: {name: backdoor}
        backdoor: {confounders: 1}
        search:
          space:
            backdoor.confounders: {int: [1, 4]}
        """)
    assert "s.yaml:7: search.space.backdoor.confounders" in msg
    assert "the value 4 it can take is invalid" in msg and "must be <= 2" in msg


def test_search_where_that_matches_no_cell_is_an_error():
    msg = error("""\
        name: x
        grid: {method.name: [ce, la]}
        search:
          space: {method.tau: {float: [0.5, 2]}}
          where: {method.name: [backdor]}
        """)
    assert "search.where" in msg and "matches no cell" in msg


def test_selecting_on_a_test_metric_is_refused():
    assert "leaks the test split" in error("name: x\nsearch: {metric: test/acc}\n")


def test_grid_algorithm_num_samples_must_match_the_space():
    msg = error("name: x\nsearch: {algorithm: grid, num_samples: 5, space: {method.tau: "
                "{categorical: [1, 2]}}}\n")
    assert "search.num_samples = 5: algorithm grid tries all 2 combinations" in msg


def test_scheduler_shorthand_and_asha_max_t_defaults_to_the_largest_epochs():
    assert study("name: x\nscheduler: fifo\n").scheduler.kind == "fifo"
    s = study("name: x\nfinetune: {epochs: 3}\nscheduler: {asha: {grace_period: 1}}\n"
              "grid: {finetune.epochs: [2, 7]}\n")
    assert s.scheduler.kind == "asha" and s.scheduler.asha.max_t == 7


def test_two_schedulers_at_once_are_refused():
    assert "exactly one scheduler" in error("name: x\nscheduler: {fifo: {}, asha: {}}\n")


def test_seeds_must_be_distinct_and_non_empty():
    assert "seed 1 is listed twice" in error("name: x\nseeds: [1, 1]\n")
    assert "seeds = []: give at least one seed" in error("name: x\nseeds: []\n")
    assert "seed 2 is listed twice" in error("name: x\nseeds: {pretrain: [2, 2]}\n")
    assert "seeds.world" in error("name: x\nseeds: {world: []}\n")


def test_unknown_dataset_and_method_are_checked_against_the_registries():
    assert "dataset.name = cifar1000_lt: unknown dataset; did you mean" in error(
        "name: x\ndataset: {name: cifar1000_lt}\n")
    assert "method.base_method = posthoc_la: must be a training method" in error(
        "name: x\nmethod: {name: gla, base_method: posthoc_la}\n")


def test_spec_hash_ignores_locations_but_not_content():
    a = study("name: x\n")
    b = study("name: x\nstorage: /tmp/elsewhere\nmax_concurrent: 4\n")
    c = study("name: x\nfinetune: {lr: 0.02}\n")
    assert a.spec_hash() == b.spec_hash() != c.spec_hash()


def test_resolved_yaml_round_trips():
    s = load_study(REPO / "studies" / "smoke.yaml")
    again = parse_study(s.to_yaml(), "resolved.yaml")
    assert again.model_dump() == s.model_dump()


def test_relative_storage_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert study("name: x\nstorage: runs\n").storage == str(tmp_path / "runs")
    assert study("name: x\nstorage: s3://bucket/runs\n").storage == "s3://bucket/runs"


def test_paths_get_set_and_resolve():
    doc = {"backbones": [{"name": "a"}, {"name": "b"}], "finetune": {"lr": 0.1}}
    set_path(doc, split_path("backbones.*.name"), "z")
    set_path(doc, split_path("finetune.lr"), 0.5)
    assert get_path(doc, split_path("backbones.*.name")) == ["z", "z"]
    assert get_path(doc, split_path("finetune.lr")) == 0.5
    assert resolve_path(TrialSections, split_path("backbones.0.pretrain.view"))[0] == [
        "backbones", 0, "pretrain", "view"]
    with pytest.raises(ValueError, match="did you mean 'imbalance_ratio'"):
        resolve_path(TrialSections, split_path("dataset.imbalance_rate"))
    with pytest.raises(ValueError, match="is a list"):
        resolve_path(TrialSections, split_path("backbones.name"))


def test_json_schema_export_documents_the_study_and_the_saved_copy_is_current():
    import json
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "platform.schema"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    schema = json.loads(proc.stdout)
    assert schema["required"] == ["name"] and schema["additionalProperties"] is False
    for key in ("dataset", "backbones", "grid", "search", "scheduler", "resources", "seeds"):
        assert key in schema["properties"]
    dists = schema["$defs"]["SearchSpec"]["properties"]["space"]["additionalProperties"]["oneOf"]
    assert [set(d["properties"]) for d in dists] == [{kind, "when"} for kind in (
        "int", "float", "logfloat", "categorical", "subset", "simplex")]  # from platform.space's models
    saved = REPO / "studies" / "study.schema.json"
    assert json.loads(saved.read_text()) == schema, "stale: run `make schema`"


def test_default_tracking_uri_follows_mlflow_tracking_uri(monkeypatch):
    from platform import paths

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert paths.default_tracking_uri() == "http://127.0.0.1:5999"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert paths.default_tracking_uri().startswith("sqlite:///")


@pytest.mark.parametrize("metric", ["test/acc", "zeroshot/test_acc"])
def test_a_selection_metric_computed_on_test_is_refused(metric, tmp_path):
    from platform.run import main

    assert main(["studies/smoke.yaml", "--dry-run", "--set", f"search.metric={metric}"]) == 2


@pytest.mark.parametrize("grid", ["{method.tau: [0.5], method.name: [ce, la]}",
                                  "{method.name: [ce, la], method.tau: [0.5]}"])
def test_a_method_field_axis_next_to_a_method_axis_is_refused_in_either_order(grid):
    # method names are set before fields, so tau is never silently dropped from the ce cell
    msg = error(f"name: x\ngrid: {grid}\n")
    assert "method 'ce' has no field 'tau'" in msg and "remove it, or use a method that reads it" in msg


def test_a_method_field_axis_next_to_a_method_axis_gives_the_same_cells_in_either_order():
    from platform.grid import expand_grid

    methods = []
    for grid in ("{method.tau: [0.5, 2.0], method.name: [la, gla_train]}",
                 "{method.name: [la, gla_train], method.tau: [0.5, 2.0]}"):
        points = expand_grid(study(f"name: x\ngrid: {grid}\n"))
        methods.append(sorted((p.trial["method"]["name"], p.trial["method"]["tau"]) for p in points))
    assert methods[0] == methods[1] == sorted((m, t) for m in ("la", "gla_train") for t in (0.5, 2.0))


@pytest.mark.parametrize("grid", ["{method: [{name: la, tau: 1.0}], method.name: [gla_train]}",
                                  "{method.name: [gla_train], method: [{name: la, tau: 1.0}]}"])
def test_a_method_name_axis_next_to_a_method_block_axis_wins_in_either_order(grid):
    # the block is set before the fields inside it: the cell runs the method its label names
    from platform.grid import expand_grid

    point, = expand_grid(study(f"name: x\ngrid: {grid}\n"))
    assert point.trial["method"]["name"] == "gla_train" and point.trial["method"]["tau"] == 1.0
