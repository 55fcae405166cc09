"""Search spaces: distribution models with conditions, define-by-run sampling, validation in a study."""

from __future__ import annotations

import textwrap

import optuna
import pytest

from platform.errors import SpecError
from platform.space import check_distribution, grid_size, grid_values, sample
from platform.studyfile import parse_study

SPACE = {
    "backdoor.weighting": check_distribution({"categorical": ["uniform", "searched"]}),
    "backdoor.weights": check_distribution({"simplex": 3, "when": {"backdoor.weighting": ["searched"]}}),
    "backdoor.confounders": check_distribution({"int": [1, 3]}),
}


def test_a_condition_is_kept_and_checked():
    assert SPACE["backdoor.weights"] == {"simplex": 3, "when": {"backdoor.weighting": ["searched"]}}
    with pytest.raises(ValueError, match="when"):
        check_distribution({"simplex": 3, "when": {"backdoor.weighting": []}})
    with pytest.raises(ValueError, match="one-key mapping"):
        check_distribution({"when": {"a": [1]}})


def test_define_by_run_sampling_never_samples_an_inactive_parameter():
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=4))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        values = sample(SPACE, trial)
        seen.add(values["backdoor.weighting"])
        has_weights = any(p.startswith("backdoor.weights") for p in trial.params)
        assert has_weights == (values["backdoor.weighting"] == "searched") == ("backdoor.weights" in values)
        if has_weights:
            assert sum(values["backdoor.weights"]) == pytest.approx(1.0)
        study.tell(trial, float(values["backdoor.confounders"]))
    assert seen == {"uniform", "searched"}


def test_a_condition_may_read_the_cells_config_instead_of_a_searched_value():
    space = {"backdoor.weights": SPACE["backdoor.weights"]}
    study = optuna.create_study()
    fixed_uniform = sample(space, study.ask(), lambda path: "uniform")
    fixed_searched = sample(space, study.ask(), lambda path: "searched")
    assert fixed_uniform == {} and len(fixed_searched["backdoor.weights"]) == 3


def test_grid_values_and_size_refuse_conditions():
    assert grid_values({"a": {"int": [1, 3]}, "b": {"categorical": ["x", "y"]}}) == {"a": [1, 2, 3], "b": ["x", "y"]}
    assert grid_size({"a": {"int": [1, 3]}, "b": {"categorical": ["x", "y"]}}) == 6
    with pytest.raises(ValueError, match="conditional"):
        grid_values({"a": {"categorical": [1, 2], "when": {"b": ["x"]}}})


def _error(text: str) -> str:
    with pytest.raises(SpecError) as e:
        parse_study(textwrap.dedent(text), "s.yaml")
    return str(e.value)


def test_a_condition_on_a_later_or_unknown_parameter_is_an_error():
    msg = _error("""\
        name: x
        search:
          space:
            backdoor.weights: {simplex: 2, when: {backdoor.weighting: [searched]}}
            backdoor.weighting: {categorical: [uniform, searched]}
        """)
    assert "list the parameter a condition reads first" in msg
    msg = _error("""\
        name: x
        search:
          space:
            backdoor.weights: {simplex: 2, when: {backdoor.weightin: [searched]}}
        """)
    assert "'backdoor.weightin' is not a trial path" in msg
    msg = _error("""\
        name: x
        search:
          algorithm: grid
          space:
            method.tau: {categorical: [1, 2], when: {method.name: [la]}}
        """)
    assert "algorithm grid enumerates every combination" in msg


def test_backdoor_baselines_are_checked_against_the_method_registry():
    msg = _error("""\
        name: x
        backbones: [{name: a}, {name: b}]
        method: {name: backdoor}
        backdoor: {confounders: 2, baselines: [{name: cee}, {name: backdoor}, {name: gla, base_method: gla}]}
        """)
    assert "backdoor.baselines.0.name" in msg and "did you mean 'ce'" in msg  # validation: the union's tag
    msg = _error("""\
        name: x
        backbones: [{name: a}, {name: b}]
        method: {name: backdoor}
        backdoor: {confounders: 2, baselines: [{name: ce}, {name: backdoor}, {name: gla, base_method: gla}]}
        """)
    assert "not an ensemble" in msg and "backdoor.baselines.2.base_method" in msg


def test_an_unknown_weighting_rule_is_named_with_the_known_ones():
    msg = _error("""\
        name: x
        backbones: [{name: a}, {name: b}]
        method: {name: backdoor}
        backdoor: {confounders: 2, weighting: bias_conditional}
        """)
    assert "backdoor.weighting" in msg and "known: fitted, reliability, searched, uniform" in msg
    msg = _error("""\
        name: x
        backbones: [{name: a}, {name: b}]
        method: {name: backdoor}
        backdoor: {confounders: 2, weighting: reliability, aggregation: logit}
        """)
    assert "backdoor.aggregation" in msg and "logprob" in msg
