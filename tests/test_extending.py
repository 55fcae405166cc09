"""docs/EXTENDING.md, checked: a method added in one place (its config model, its loss, ``register``)
works end to end, with a hyper-parameter no other method has and without touching
trainables/config.py: the study validates and plans it, a grid over ``method.name`` drops its field
from the other cells, its cache key and its MLflow params hold exactly its config's fields, a field
it does not have is an error naming the method, and a real trial trains with it."""

from __future__ import annotations

from typing import Literal

import pytest
import torch
import torch.nn.functional as F
from pydantic import Field, ValidationError

from platform.dotpath import set_path
from platform.run import format_plan
from plans import plan_from_text
from test_trainable import C, Recorder, T, _config, checkpoint  # noqa: F401 - the fixture
from trainables.cache import stage1_key
from trainables.config import MethodConfig, TrialConfig, method_config
from trainables.contract import trial_params
from trainables.methods import METHODS, Method, register

NAME = "unit_temp_ce"


class TempCEConfig(MethodConfig):
    """unit_temp_ce's config: its name and its own hyper-parameter."""

    name: Literal["unit_temp_ce"] = "unit_temp_ce"
    temperature: float = Field(1.0, gt=0, description="logits are divided by it")


class TemperatureCE:
    """CE(z / temperature, y): the worked example of docs/EXTENDING.md."""

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, epoch: int) -> torch.Tensor:
        return F.cross_entropy(logits.float() / self.temperature, labels)


def _temp_ce(cfg: TempCEConfig, train_counts, epochs: int, q_hat, logit_scale: float) -> TemperatureCE:
    """unit_temp_ce: CE(z / temperature)."""
    return TemperatureCE(cfg.temperature)


@pytest.fixture()
def dummy_method():
    method = register(Method(NAME, "train", loss_factory=_temp_ce, config=TempCEConfig, doc=_temp_ce.__doc__ or ""))
    yield method
    METHODS.remove(NAME)


STUDY = """
name: extending-test
dataset: {{name: toy_lt, imbalance_ratio: 10, val_per_class: 5,
          world: {{num_classes: 5, n_max: 40, test_per_class: 10, image_size: 16}}}}
backbones: [{{family: toy, pretrain: {{corpus_size: 1000, epochs: 3, width: 32, depth: 1}}}}]
finetune: {{peft: linear, head: linear, epochs: 1, batch_size: 64, augment: false}}
method: {{name: {name}, temperature: 2.0}}
grid:
  method.name: [ce, {name}]
storage: {tmp}/storage
tracking_uri: sqlite:///{tmp}/mlflow.db
""".replace("{name}", NAME)


def test_a_registered_method_is_planned_keyed_and_logged_by_its_own_fields(dummy_method, tmp_path):
    assert dummy_method.params == ("temperature",)  # derived from its config
    plan = plan_from_text(STUDY, tmp_path)
    cells = {c.values["method.name"]: c for c in plan.cells}
    assert cells[NAME].kind == "train"
    assert cells[NAME].base_config["method"] == {"name": NAME, "temperature": 2.0}
    assert cells["ce"].base_config["method"] == {"name": "ce"}  # the grid dropped the other method's field
    table = format_plan(plan)  # --dry-run shows each cell's resolved method
    assert f"{NAME} temperature=2.0" in table and "temperature" not in table.split(f"{cells['ce'].id} ", 1)[1].split("\n")[0]
    params = trial_params(cells[NAME].base_config)
    assert params["method.temperature"] == 2.0 and "method.tau" not in params
    assert not any(k.startswith("method.") and k != "method.name" for k in trial_params(cells["ce"].base_config))
    cfg = TrialConfig.model_validate(cells[NAME].base_config)
    assert isinstance(cfg.method, TempCEConfig)
    other = cfg.model_copy(update={"method": method_config(name=NAME, temperature=3.0)})
    assert stage1_key(other) != stage1_key(cfg) == stage1_key(TrialConfig.model_validate(cells[NAME].base_config))


def test_a_field_the_method_does_not_have_is_an_error_naming_the_method(dummy_method):
    with pytest.raises(ValidationError, match=r"method 'ce' has no field 'temperature' \(its fields: name\)"):
        TrialConfig.model_validate({"method": {"name": "ce", "temperature": 2.0}})
    with pytest.raises(ValidationError, match=rf"method '{NAME}' has no field 'tau' \(its fields: name, temperature\)"):
        TrialConfig.model_validate({"method": {"name": NAME, "tau": 2.0}})
    with pytest.raises(ValidationError, match=r"unknown method 'unit_temp_cee'; did you mean 'unit_temp_ce'"):
        TrialConfig.model_validate({"method": {"name": "unit_temp_cee"}})


def test_setting_a_method_name_drops_only_the_fields_the_new_method_lacks(dummy_method):
    doc = {"method": {"name": "gla", "tau": 0.5, "base_method": "la"},
           "backdoor": {"baselines": [{"name": "la", "tau": 2.0}]}}
    set_path(doc, ["method", "name"], "posthoc_la")  # same fields: all kept
    assert doc["method"] == {"name": "posthoc_la", "tau": 0.5, "base_method": "la"}
    set_path(doc, ["method", "name"], NAME)
    assert doc["method"] == {"name": NAME}
    set_path(doc, ["backdoor", "baselines", "*", "name"], "gla_train")
    assert doc["backdoor"]["baselines"] == [{"name": "gla_train", "tau": 2.0}]
    set_path(doc, ["backdoor", "baselines", 0, "name"], "ce")
    assert doc["backdoor"]["baselines"] == [{"name": "ce"}]


def test_a_registered_method_trains_a_real_trial(dummy_method, checkpoint, tmp_path):  # noqa: F811
    rec = Recorder(tmp_path)
    final = T.run_trial(_config(checkpoint, tmp_path, method__name=NAME, method__temperature=2.0,
                                finetune__epochs=1), rec)
    assert [m["epoch"] for m, _ in rec.reports] == [1]
    assert 0.0 <= final["test/acc"] <= 1.0 and final["train/loss"] > 0
