"""CellSearcher: stage-1 first, post-hoc cells never wait, seed groups, Optuna bookkeeping, restore.

No Ray cluster here: the searcher is driven by hand the way Tune drives it (suggest, then
on_trial_complete with the trial's last result).
"""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState
from ray.tune.search import Searcher

from platform.paths import open_optuna_storage
from platform.plan import apply_params
from plans import plan_from_text
import json

from platform.searcher import (META_KEY, STAGE1_CELL, CellSearcher, get_path, plan_bases,
                               plan_num_trials, resolve_config, strip_meta, trial_meta)
from platform.space import sample
from trainables.config import TrialConfig

STUDY = """
name: searcher-test
dataset:
  name: toy_lt
  imbalance_ratio: 10
  val_per_class: 5
  world: {{num_classes: 5, n_max: 40, test_per_class: 10, image_size: 16}}
backbones:
  - {{family: toy, pretrain: {{corpus_size: 1000, epochs: 3, width: 32, depth: 1}}}}
finetune: {{peft: linear, head: linear, epochs: 2, lr: 0.5, batch_size: 64, augment: false}}
method: {{name: ce}}
grid:
  method.name: [ce, posthoc_la]
search:
  algorithm: optuna
  num_samples: 2
  where: {{method.name: [ce]}}
  space:
    finetune.lr: {{logfloat: [0.01, 1.0]}}
seeds: [0, 1]
storage: {tmp}/storage
tracking_uri: sqlite:///{tmp}/mlflow.db
"""


@pytest.fixture()
def plan(tmp_path):
    return plan_from_text(STUDY, tmp_path)


def _suggest_all(searcher: CellSearcher, n: int, start: int = 0) -> list[tuple[str, dict]]:
    """(trial id, resolved trial config) of the next ``n`` suggestions."""
    out = []
    bases = plan_bases(searcher._plan)
    for i in range(start, start + n):
        config = searcher.suggest(f"t{i}")
        assert isinstance(config, dict), f"suggestion {i} was {config!r}"
        out.append((f"t{i}", resolve_config(config, bases)))
    return out


def _pool_study(members: int) -> str:
    backbones = "\n".join(
        f"  - {{{{family: toy, label: m{i}, pretrain: {{{{seed: {i}, corpus_size: 1000, epochs: 3, "
        f"width: 32, depth: 1}}}}}}}}" for i in range(members))
    confounders = ", ".join(str(m) for m in range(1, members + 1))
    return f"""
name: pool-{members}
dataset:
  name: toy_lt
  imbalance_ratio: 10
  val_per_class: 5
  world: {{{{num_classes: 5, n_max: 40, test_per_class: 10, image_size: 16}}}}
backbones:
{backbones}
finetune: {{{{peft: linear, head: linear, epochs: 2, lr: 0.5, batch_size: 64, augment: false}}}}
method: {{{{name: backdoor}}}}
grid:
  backdoor.confounders: [{confounders}]
search: {{{{algorithm: grid}}}}
seeds: [0, 1]
storage: {{tmp}}/storage
tracking_uri: sqlite:///{{tmp}}/mlflow.db
"""


def test_tune_trial_configs_stay_small_whatever_the_pool_and_grid_size(tmp_path):
    """Tune keeps every trial's config (several copies) in its experiment state: the config it
    carries is the envelope, a base-config key and the trial's own values, whatever the size of
    the shared base (pool members) or of the grid; the full config is resolved from the plan."""
    largest = {}
    for members in (2, 8):
        folder = tmp_path / str(members)
        folder.mkdir()
        plan = plan_from_text(_pool_study(members), folder)
        s, bases = CellSearcher(plan), plan_bases(plan)
        sizes, full = [], []
        for i in range(plan_num_trials(plan)):
            config = s.suggest(f"t{i}")
            resolved = resolve_config(config, bases)
            TrialConfig.model_validate(strip_meta(resolved))
            assert trial_meta(resolved)["cell"] == trial_meta(config)["cell"]
            if trial_meta(config)["cell"] != STAGE1_CELL:
                assert len(resolved["pool"]) == members
            sizes.append(len(json.dumps(config)))
            full.append(len(json.dumps(resolved)))
        assert s.suggest("end") == Searcher.FINISHED
        largest[members] = max(sizes)
        assert max(sizes) < max(full) / 3, (sizes, full)
    assert largest[8] <= largest[2] + 16, largest  # a digit more in a key or a group index at most


def test_a_config_from_another_plan_names_the_fix(plan):
    config = CellSearcher(plan).suggest("t0")
    with pytest.raises(ValueError, match="study file it started with"):
        resolve_config(config, {})


def _optuna_trials(plan, cell_id: str) -> list:
    study = optuna.load_study(study_name=f"{plan.study.name}/{cell_id}",
                              storage=open_optuna_storage(plan.optuna_storage))
    return study.get_trials(deepcopy=False)


def test_plan_counts_match_the_searcher(plan):
    assert [c.kind for c in plan.cells] == ["train", "posthoc"]
    assert len(plan.prerequisites) == 2  # the ce fine-tune of each seed, for posthoc_la
    assert CellSearcher(plan).total_trials == plan.total_trials == 2 + 2 * 2 + 1


def test_stage1_prerequisites_come_first_and_posthoc_follows_without_waiting(plan):
    s = CellSearcher(plan)
    emitted = _suggest_all(s, 7)  # never None: a slot left empty costs Tune its worker
    cells = [trial_meta(c)["cell"] for _, c in emitted]
    assert cells == [STAGE1_CELL, STAGE1_CELL, "c00", "c00", "c00", "c00", "c01"]
    posthoc = emitted[-1][1]
    assert trial_meta(posthoc)["stage"] == 2
    # one trial: the trainable averages the replicates itself
    assert [r["finetune"] for r in posthoc["replicates"]] == [0, 1] and trial_meta(posthoc)["replicate"] is None
    assert s.suggest("t7") == Searcher.FINISHED
    s.on_trial_complete("t1", error=True)  # an errored prerequisite changes no cell's bookkeeping
    assert s.suggest("t8") == Searcher.FINISHED


def test_every_config_validates_as_a_trial_config_once_meta_is_stripped(plan):
    s = CellSearcher(plan)
    for _, config in _suggest_all(s, 6):
        assert META_KEY in config
        TrialConfig.model_validate(strip_meta(config))


def test_seed_group_shares_params_and_tells_optuna_the_mean_when_complete(plan):
    s = CellSearcher(plan)
    emitted = dict(_suggest_all(s, 6))
    a, b = emitted["t2"], emitted["t3"]
    assert (a["seed"], b["seed"]) == (0, 1)
    assert (trial_meta(a)["replicate"], trial_meta(b)["replicate"]) == ("w0-p0-f0", "w0-p0-f1")
    assert a["replicates"] == [{"world": 0, "pretrain": 0, "finetune": 0}]
    assert a["finetune"]["lr"] == b["finetune"]["lr"]
    assert trial_meta(a)["optuna_trial"] == trial_meta(b)["optuna_trial"] == 0
    s.on_trial_complete("t2", {"val/acc": 0.4})
    assert _optuna_trials(plan, "c00")[0].state == TrialState.RUNNING  # half a group: no tell
    s.on_trial_complete("t3", {"val/acc": 0.6})
    first = _optuna_trials(plan, "c00")[0]
    assert first.state == TrialState.COMPLETE and first.value == pytest.approx(0.5)
    assert first.params["finetune.lr"] == a["finetune"]["lr"]


def test_failed_member_is_left_out_and_a_group_without_values_fails(plan):
    s = CellSearcher(plan)
    _suggest_all(s, 6)
    s.on_trial_complete("t2", error=True)
    s.on_trial_complete("t3", {"val/acc": 0.7})
    s.on_trial_complete("t4", {"val/acc": float("nan")})  # a NaN metric is no value
    s.on_trial_complete("t5", error=True)
    first, second = _optuna_trials(plan, "c00")
    assert first.state == TrialState.COMPLETE and first.value == pytest.approx(0.7)
    assert second.state == TrialState.FAIL


def test_restore_continues_without_repeating_and_hands_out_orphaned_optuna_trials_again(plan, tmp_path):
    s1 = CellSearcher(plan)
    _suggest_all(s1, 3)  # two stage-1 trials, first seed of group 0
    s1.save(str(tmp_path / "searcher.pkl"))
    lost = _suggest_all(s1, 2, start=3)  # asks Optuna trial 1; the crash loses this bookkeeping

    s2 = CellSearcher(plan)
    s2.restore(str(tmp_path / "searcher.pkl"))
    rest = _suggest_all(s2, 3, start=3)
    assert [trial_meta(c)["cell"] for _, c in rest] == ["c00"] * 3
    # Optuna trial 1 was asked but never run: it is run now, with the parameters it was given.
    assert [(trial_meta(c)["optuna_trial"], c["seed"]) for _, c in rest] == [(0, 1), (1, 0), (1, 1)]
    assert rest[1][1]["finetune"]["lr"] == lost[1][1]["finetune"]["lr"]
    assert len(_optuna_trials(plan, "c00")) == 2  # as many Optuna trials as planned, no extra
    for tid in ("t0", "t1"):
        s2.on_trial_complete(tid, {"val/acc": 0.5})
    assert trial_meta(s2.suggest("t6"))["cell"] == "c01"
    assert s2.suggest("t7") == Searcher.FINISHED


def _lrs(searcher: CellSearcher, n: int, start: int = 0) -> list[tuple[int, float]]:
    out = []
    for i in range(start, start + n):
        [(tid, config)] = _suggest_all(searcher, 1, i)  # each finishes before the next is asked
        meta = trial_meta(config)
        if meta["cell"] == "c00":
            out.append((meta["optuna_trial"], config["finetune"]["lr"]))
            searcher.on_trial_complete(tid, {"val/acc": config["finetune"]["lr"]})
        else:
            searcher.on_trial_complete(tid, {"val/acc": 0.5})
    return out


def test_a_resumed_sampler_proposes_what_an_uninterrupted_one_does(tmp_path):
    text = STUDY.replace("num_samples: 2", "num_samples: 6").replace("seeds: [0, 1]", "seeds: [0]")
    plan = plan_from_text(text, tmp_path)
    clean = _lrs(CellSearcher(plan, execution="clean"), 8)  # 2 stage-1 trials, then 6 configs

    first = CellSearcher(plan, execution="crashed")
    before = _lrs(first, 4)
    first.save(str(tmp_path / "searcher.pkl"))
    _suggest_all(first, 1, start=4)  # asked, never run: lost with the driver
    resumed = CellSearcher(plan, execution="crashed")
    resumed.restore(str(tmp_path / "searcher.pkl"))
    after = _lrs(resumed, 4, start=4)
    assert before + after == clean
    assert len(optuna.load_study(study_name="searcher-test/crashed/c00",
                                 storage=open_optuna_storage(plan.optuna_storage)).trials) == 6


def test_executions_have_their_own_optuna_studies_and_none_is_deleted(plan):
    s1 = CellSearcher(plan, execution="first")
    _suggest_all(s1, 3)
    s2 = CellSearcher(plan, execution="second")
    b = _suggest_all(s2, 3)
    names = {s.study_name for s in optuna.get_all_study_summaries(open_optuna_storage(plan.optuna_storage))}
    assert {"searcher-test/first/c00", "searcher-test/second/c00"} <= names
    first = optuna.load_study(study_name="searcher-test/first/c00", storage=open_optuna_storage(plan.optuna_storage))
    assert len(first.trials) == 1 and first.trials[0].params["finetune.lr"] == b[2][1]["finetune"]["lr"]


def test_subset_becomes_a_non_empty_index_list_and_simplex_weights_sum_to_one():
    space = {"backdoor.strata": {"subset": 3}, "backdoor.weights": {"simplex": 3},
             "backdoor.confounders": {"int": [1, 3]}}
    params = {"backdoor.strata.0": True, "backdoor.strata.1": False, "backdoor.strata.2": True,
              "backdoor.weights.0": 0.2, "backdoor.weights.1": 0.6, "backdoor.weights.2": 0.2,
              "backdoor.confounders": 2}
    values = sample(space, optuna.trial.FixedTrial(params, 4))
    assert values["backdoor.strata"] == [0, 2]
    assert values["backdoor.weights"] == pytest.approx([0.2, 0.6, 0.2])
    empty = dict(params, **{f"backdoor.strata.{i}": False for i in range(3)})
    assert sample(space, optuna.trial.FixedTrial(empty, 4))["backdoor.strata"] == [1]  # repaired: 4 % 3


def test_searched_values_reach_nested_list_and_starred_paths():
    config = {"finetune": {"lr": 0.1}, "pool": [{"name": "a"}, {"name": "b"}]}
    out = apply_params(config, {"finetune.lr": 0.5, "pool.1.name": "z"})
    assert get_path(out, "finetune.lr") == 0.5 and out["pool"][1]["name"] == "z"
    assert config["finetune"]["lr"] == 0.1  # a copy: the cell's base config is untouched
    starred = apply_params(config, {"pool.*.name": "w"})
    assert [p["name"] for p in starred["pool"]] == ["w", "w"] and get_path(starred, "pool.*.name") == "w"
    assert get_path(config, "pool.7.name", "missing") == "missing"
