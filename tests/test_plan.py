"""The plan: grid product, '*' and index paths, per-cell trial configs, trials, prerequisites."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from platform import paths
from platform.errors import SpecError
from platform.plan import apply_params, make_plan
from platform.studyfile import parse_study
from trainables.config import TrialConfig

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _outputs(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.OUTPUTS_ENV, str(tmp_path / "outputs"))


def plan_of(text: str, *overrides: str):
    return make_plan(parse_study(text, "p.yaml", overrides), "p.yaml")


def plan_error(text: str) -> str:
    with pytest.raises(SpecError) as e:
        plan_of(text)
    return str(e.value)


TWO_POOL = textwrap.dedent("""\
    name: p
    backbones:
      - {name: a, pretrain: {imbalance_ratio: 5}}
      - {name: b, pretrain: {imbalance_ratio: 5}}
    """)


def test_grid_is_the_full_product_in_file_order_with_stable_ids_and_labels():
    plan = plan_of(TWO_POOL + "grid:\n  dataset.imbalance_ratio: [10, 100]\n"
                              "  method.name: [ce, la, focal]\n")
    assert [c.id for c in plan.cells] == [f"c{i:02d}" for i in range(6)]
    assert [c.values for c in plan.cells[:4]] == [
        {"dataset.imbalance_ratio": 10, "method.name": "ce"},
        {"dataset.imbalance_ratio": 10, "method.name": "la"},
        {"dataset.imbalance_ratio": 10, "method.name": "focal"},
        {"dataset.imbalance_ratio": 100, "method.name": "ce"}]
    assert plan.cells[4].label == "dataset.imbalance_ratio=100 method.name=la"
    assert plan.cells[5].base_config["dataset"]["imbalance_ratio"] == 100.0
    assert plan.cells[5].base_config["method"]["name"] == "focal"


def test_star_path_sets_every_pool_member_and_an_index_path_only_one():
    plan = plan_of(TWO_POOL + "backbone_index: 1\ngrid:\n"
                              "  backbones.*.pretrain.imbalance_ratio: [1, 50]\n"
                              "  backbones.0.pretrain.view: [top]\n")
    ratios = [[b["pretrain"]["imbalance_ratio"] for b in c.base_config["pool"]] for c in plan.cells]
    assert ratios == [[1.0, 1.0], [50.0, 50.0]]
    for cell in plan.cells:
        pool = cell.base_config["pool"]
        assert [b["pretrain"]["view"] for b in pool] == ["top", "all"]
        assert cell.base_config["backbone"] == pool[1]  # backbone_index 1


def test_base_config_is_a_valid_trial_config_with_seeds_and_runtime_under_storage(tmp_path):
    plan = plan_of(TWO_POOL + f"seeds: [3, 4]\nstorage: {tmp_path / 'runs'}\n")
    cfg = plan.cells[0].base_config
    assert TrialConfig.model_validate(cfg).model_dump(mode="json") == cfg
    assert cfg["seed"] == 3 and cfg["replicates"] == [{"world": 0, "pretrain": 0, "finetune": f} for f in (3, 4)]
    assert [b["name"] for b in cfg["pool"]] == ["a", "b"] and cfg["backbone"]["name"] == "a"
    assert cfg["runtime"]["cache_dir"] == str(tmp_path / "runs" / "_cache")
    assert cfg["runtime"]["zoo_dir"] == str(tmp_path / "runs" / "_zoo")
    assert plan.storage == str(tmp_path / "runs")


def test_explicit_runtime_dirs_are_kept_but_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = plan_of("name: p\nruntime: {cache_dir: mycache}\n").cells[0].base_config
    assert cfg["runtime"]["cache_dir"] == str(tmp_path / "mycache")


def test_kinds_trials_and_where_restricted_search():
    plan = plan_of(TWO_POOL + textwrap.dedent("""\
        seeds: [0, 1]
        backdoor: {confounders: 2}
        grid: {method.name: [la, posthoc_la, backdoor]}
        search:
          num_samples: 5
          space: {backdoor.weighting: {categorical: [uniform, fitted]}}
          where: {method.name: [backdoor]}
        """))
    la, post, bd = plan.cells
    assert (la.kind, post.kind, bd.kind) == ("train", "posthoc", "ensemble")
    assert la.space == {} and la.num_samples == 1 and la.trials == 2  # once per seed
    assert post.space == {} and post.trials == 1  # one stage-2 trial evaluates every seed
    assert bd.space == {"backdoor.weighting": {"categorical": ["uniform", "fitted"]}}
    assert bd.num_samples == 5 and bd.trials == 5 and bd.algorithm == "optuna"


def test_prerequisites_are_unique_across_cells_and_counted_in_total_trials():
    plan = plan_of(TWO_POOL + "seeds: [0, 1]\ngrid: {method.name: [posthoc_la, gla]}\n")
    assert [len(c.prerequisites) for c in plan.cells] == [2, 2]  # base_method ce, one per seed
    assert len(plan.prerequisites) == 2  # both cells read the same ce runs
    assert {p["seed"] for p in plan.prerequisites} == {0, 1}
    assert all(p["method"]["name"] == "ce" for p in plan.prerequisites)
    assert plan.total_trials == 1 + 1 + 2


def test_seed_axes_are_a_cross_product_of_replicates():
    plan = plan_of(TWO_POOL + "seeds: {world: [0, 1], pretrain: [0, 1, 2]}\ngrid: {method.name: [la, posthoc_la]}\n")
    la, post = plan.cells
    assert la.trials == 6 and post.trials == 1  # stage 1 once per replicate; stage 2 evaluates all
    assert [(r["world"], r["pretrain"], r["finetune"]) for r in la.replicates] == [
        (w, p, 0) for w in (0, 1) for p in (0, 1, 2)]
    assert len(post.prerequisites) == 6


def test_grid_algorithm_tries_every_combination():
    plan = plan_of("name: p\nsearch: {algorithm: grid, space: {method.tau: {categorical: [0.5, 1, 2]}, "
                   "finetune.lr: {categorical: [0.01, 0.1]}}}\n")
    assert plan.cells[0].num_samples == 6 and plan.cells[0].trials == 6


def test_plan_carries_metric_resources_hash_and_optuna_storage(tmp_path):
    plan = plan_of(f"name: p\nresources: {{cpu: 0.5, gpu: 0.25}}\nmax_concurrent: 3\n"
                   f"tracking_uri: sqlite:///{tmp_path}/db/mlflow.db\n"
                   f"search: {{metric: val/bal_acc, mode: max}}\n")
    assert plan.resources == {"cpu": 0.5, "gpu": 0.25} and plan.max_concurrent == 3
    assert (plan.metric, plan.mode) == ("val/bal_acc", "max")
    assert plan.optuna_storage == f"{tmp_path}/db/optuna.journal.log"
    assert plan.spec_hash == plan.study.spec_hash() and len(plan.spec_hash) == 64
    remote = plan_of(f"name: p\ntracking_uri: http://mlflow:5000\nstorage: {tmp_path}/runs\n")
    assert remote.optuna_storage == f"{tmp_path}/runs/optuna.journal.log"


def test_repeated_axis_value_is_a_duplicate_cell_naming_axis_and_value():
    msg = plan_error("name: p\ngrid:\n  method.name: [ce, la]\n  dataset.imbalance_ratio: [10, 100, 10.0]\n")
    assert msg.startswith("p.yaml:4: grid.dataset.imbalance_ratio = 10.0: value 10.0 gives the "
                          "same trial config as 10")


def test_axis_values_with_the_same_effect_are_duplicates():
    msg = plan_error(TWO_POOL.replace("name: b", "name: a") + "grid: {backbone_index: [0, 1]}\n")
    assert "grid.backbone_index = 1: value 1 gives the same trial config as 0" in msg


def test_invalid_grid_value_names_the_cell_and_the_value_line():
    msg = plan_error("name: p\ngrid:\n  method.name: [ce, la]\n  finetune.lr: [0.1, -1]\n")
    assert msg.startswith("p.yaml:4: finetune.lr = -1: must be > 0")
    assert "grid axis finetune.lr = -1, in cells c01, c03" in msg


def test_backbone_index_beyond_the_pool_is_refused():
    assert "backbone_index = 2: must be < 2" in plan_error(TWO_POOL + "backbone_index: 2\n")


def test_an_axis_that_is_also_searched_is_refused():
    msg = plan_error("name: p\ngrid: {finetune.lr: [0.1]}\nsearch: {space: {finetune.lr: "
                     "{logfloat: [0.001, 0.1]}}}\n")
    assert "search.space.finetune.lr: is also the grid axis 'finetune.lr'" in msg


def test_apply_params_sets_searched_values_on_a_copy():
    plan = make_plan(parse_study((REPO / "studies" / "smoke.yaml").read_text(), "smoke.yaml"),
                     "smoke.yaml")
    base = plan.cells[0].base_config
    cfg = apply_params(base, {"finetune.lr": 0.05, "pool.*.label": "x"})
    assert cfg["finetune"]["lr"] == 0.05 and [b["label"] for b in cfg["pool"]] == ["x", "x"]
    assert base["finetune"]["lr"] == 0.01
    assert [c.trials for c in plan.cells] == [3, 3] and plan.total_trials == 6


def test_a_named_bundle_axis_sets_several_paths_per_label():
    plan = plan_of(TWO_POOL + textwrap.dedent("""\
        grid:
          pool:
            same prior: {backbones.0.pretrain.prior_seed: 9, backbones.1.pretrain.prior_seed: 9}
            different priors: {backbones.0.pretrain.prior_seed: 1, backbones.1.pretrain.prior_seed: 2}
          dataset.imbalance_ratio: [10, 100]
        """))
    assert [c.values for c in plan.cells] == [
        {"pool": p, "dataset.imbalance_ratio": ir} for p in ("same prior", "different priors") for ir in (10, 100)]
    priors = [[b["pretrain"]["prior_seed"] for b in c.base_config["pool"]] for c in plan.cells]
    assert priors == [[9, 9], [9, 9], [1, 2], [1, 2]]
    assert "pool=same prior" in plan.cells[0].label


def test_a_bundle_axis_names_a_bad_path_inside_it():
    msg = plan_error(TWO_POOL + "grid:\n  arm:\n    x: {backbones.0.pretrain.nope: 1}\n")
    assert "nope" in msg and "not a study path" in msg
