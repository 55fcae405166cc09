"""docs/EXTENDING.md, checked: a method added in one place (its loss plus ``register``) works end
to end: the study validates and plans it, its cache key and its MLflow params hold only the fields
it reads, and a real trial trains with it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from plans import plan_from_text
from test_trainable import C, Recorder, T, _config, checkpoint  # noqa: F401 - the fixture
from trainables.cache import stage1_key
from trainables.config import MethodConfig, TrialConfig
from trainables.contract import trial_params
from trainables.methods import METHODS, Method, register

NAME = "unit_temp_ce"


class TemperatureCE:
    """CE(z / tau, y): the worked example of docs/EXTENDING.md."""

    def __init__(self, tau: float) -> None:
        self.tau = tau

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, epoch: int) -> torch.Tensor:
        return F.cross_entropy(logits.float() / self.tau, labels)


def _temp_ce(cfg: MethodConfig, train_counts, epochs: int, q_hat, logit_scale: float) -> TemperatureCE:
    """unit_temp_ce: CE(z / tau)."""
    return TemperatureCE(cfg.tau)


@pytest.fixture()
def dummy_method():
    method = register(Method(NAME, "train", loss_factory=_temp_ce, params=("tau",), doc=_temp_ce.__doc__ or ""))
    yield method
    METHODS.remove(NAME)


STUDY = """
name: extending-test
dataset: {{name: toy_lt, imbalance_ratio: 10, val_per_class: 5,
          world: {{num_classes: 5, n_max: 40, test_per_class: 10, image_size: 16}}}}
backbones: [{{family: toy, pretrain: {{corpus_size: 1000, epochs: 3, width: 32, depth: 1}}}}]
finetune: {{peft: linear, head: linear, epochs: 1, batch_size: 64, augment: false}}
method: {{name: la, tau: 2.0}}
grid:
  method.name: [ce, {name}]
storage: {tmp}/storage
tracking_uri: sqlite:///{tmp}/mlflow.db
""".replace("{name}", NAME)


def test_a_registered_method_is_planned_keyed_and_logged_by_its_own_fields(dummy_method, tmp_path):
    plan = plan_from_text(STUDY, tmp_path)
    cells = {c.values["method.name"]: c for c in plan.cells}
    assert cells[NAME].kind == "train"
    params = trial_params(cells[NAME].base_config)
    assert params["method.tau"] == 2.0 and "method.gamma" not in params
    assert "method.tau" not in trial_params(cells["ce"].base_config)
    cfg = TrialConfig.model_validate(cells[NAME].base_config)
    other_tau = cfg.model_copy(update={"method": cfg.method.model_copy(update={"tau": 3.0})})
    other_gamma = cfg.model_copy(update={"method": cfg.method.model_copy(update={"gamma": 3.0})})
    assert stage1_key(other_tau) != stage1_key(cfg) == stage1_key(other_gamma)


def test_a_registered_method_trains_a_real_trial(dummy_method, checkpoint, tmp_path):  # noqa: F811
    rec = Recorder(tmp_path)
    final = T.run_trial(_config(checkpoint, tmp_path, method__name=NAME, method__tau=2.0,
                                finetune__epochs=1), rec)
    assert [m["epoch"] for m, _ in rec.reports] == [1]
    assert 0.0 <= final["test/acc"] <= 1.0 and final["train/loss"] > 0
