"""The shared trainable: per-epoch reports, exact resume, faults, cRT, post-hoc trials over the cache."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
import shutil

import numpy as np
import pytest
import timm
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from trainables import loop, trainable as T  # noqa: E402
from trainables.backbones.timm_backbone import save_timm_checkpoint  # noqa: E402
from trainables.cache import Stage1Cache, stage1_key  # noqa: E402
from trainables.checkpoint import CHECKPOINT_FILE  # noqa: E402
from trainables.config import TrialConfig  # noqa: E402
from trainables.data import DATASETS, DataSplits, LabeledImages  # noqa: E402
from trainables.errors import NonFiniteLossError  # noqa: E402
from trainables.faults import SimulatedCrash, parse_fault  # noqa: E402
from trainables.prior import estimate_prior  # noqa: E402
from tiny_models import TINY_VIT, one_thread  # noqa: E402,F401

DATASET = "unit_tiny_lt"
C = 4


def _split(counts: list[int], seed: int) -> LabeledImages:
    """Random 16x16 images whose class darkens one colour channel (learnable, not trivial)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(counts)), counts)
    images = torch.from_numpy(rng.integers(0, 256, (len(labels), 3, 16, 16), dtype=np.uint8))
    for i, y in enumerate(labels):
        images[i, y % 3] //= 1 + y // 3 * 2 + 1
    return LabeledImages(labels, lambda i: images[i])


if DATASET not in DATASETS:
    @DATASETS.register(DATASET)
    def _tiny(cfg, runtime) -> DataSplits:
        counts = np.array([24, 12, 6, 3])
        return DataSplits(_split(list(counts), 1), _split([5] * C, 2), _split([6] * C, 3),
                          [f"class_{i}" for i in range(C)], counts, counts, "train_counts")



@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("zoo") / "tiny_vit.safetensors")
    save_timm_checkpoint(timm.create_model("vit_tiny_patch16_224", num_classes=0, **TINY_VIT), path)
    return path


def _config(checkpoint: str, tmp_path, **over) -> dict:
    cfg = {"dataset": {"name": DATASET},
           "backbone": {"family": "timm", "name": "vit_tiny_patch16_224", "checkpoint": checkpoint,
                        "model_kwargs": TINY_VIT},
           "finetune": {"epochs": 2, "batch_size": 8, "peft": "adaptformer", "head": "cosine", "lr": 0.05},
           "method": {"name": "ce"}, "seed": 3,
           "runtime": {"cache_dir": str(tmp_path / "cache"), "num_threads": 1}}
    for dotted, value in over.items():
        section, key = dotted.split("__")
        cfg[section][key] = value
    return cfg


def _own_cache(cfg: dict, name: str) -> dict:
    """The same trial with its own stage-1 cache, so that it trains instead of replaying another run."""
    return {**cfg, "runtime": {**cfg["runtime"], "cache_dir": str(Path(cfg["runtime"]["cache_dir"]).parent / name)}}


class Recorder:
    """A reporter that keeps every report, copies checkpoints, and can stop the trial after N reports."""

    def __init__(self, keep_dir, stop_after: int | None = None, restore: str | None = None) -> None:
        self.reports: list[tuple[dict, list[str]]] = []
        self.keep_dir, self.stop_after, self.restore = str(keep_dir), stop_after, restore

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        files = sorted(os.listdir(checkpoint_dir)) if checkpoint_dir else []
        if checkpoint_dir:
            shutil.copytree(checkpoint_dir, os.path.join(self.keep_dir, f"ckpt{len(self.reports)}"))
        self.reports.append((metrics, files))
        if self.stop_after is not None and len(self.reports) >= self.stop_after:
            raise KeyboardInterrupt("interrupted by the test")

    def restore_dir(self) -> str | None:
        return self.restore


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        (isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k] for k in a)


def test_trial_reports_each_epoch_and_test_metrics_once_with_artifacts(checkpoint, tmp_path):
    rec = Recorder(tmp_path)
    final = T.run_trial(_config(checkpoint, tmp_path), rec)
    assert [m["epoch"] for m, _ in rec.reports] == [1, 2]
    first, last = rec.reports[0][0], rec.reports[1][0]
    assert {"train/loss", "train/lr", "trainable_params", "val/acc", "val/dp_few_few"} <= set(first)
    assert not any(k.startswith("test/") for k in first)
    assert _same(last, final) and "test/bal_acc" in final
    assert rec.reports[1][1] == ["artifacts", "state.pt"]
    assert sorted(os.listdir(tmp_path / "ckpt1" / "artifacts")) == [
        "confusion_matrix.png", "dp_heatmap.png", "logits.parquet", "per_class.parquet"]
    # the stage-1 cache entry holds the same final metrics and the val/test logits
    entry = Stage1Cache(str(tmp_path / "cache")).get(stage1_key(TrialConfig.model_validate(_config(checkpoint, tmp_path))))
    assert entry is not None and _same(entry.metrics, final)
    assert entry.test_logits.shape == (6 * C, C) and len(entry.history) == 2


def test_resumed_trial_ends_with_the_same_metrics_as_an_uninterrupted_one(checkpoint, tmp_path):
    cfg = _config(checkpoint, tmp_path, finetune__epochs=3)
    full = T.run_trial(_own_cache(cfg, "full"), Recorder(tmp_path / "a"))
    with pytest.raises(KeyboardInterrupt):
        T.run_trial(cfg, Recorder(tmp_path / "b", stop_after=1))
    resumed_rec = Recorder(tmp_path / "c", restore=str(tmp_path / "b" / "ckpt0"))
    resumed = T.run_trial(cfg, resumed_rec)
    assert [m["epoch"] for m, _ in resumed_rec.reports] == [2, 3]
    assert _same(full, resumed)


def test_crt_resumed_inside_head_retraining_matches_uninterrupted(checkpoint, tmp_path):
    cfg = _config(checkpoint, tmp_path, finetune__epochs=1, method__name="crt", method__crt_epochs=2)
    rec = Recorder(tmp_path / "a")
    full = T.run_trial(_own_cache(cfg, "full"), rec)
    assert [m["epoch"] for m, _ in rec.reports] == [1, 2, 3]
    head_params = C * 32
    assert [m["trainable_params"] for m, _ in rec.reports][1:] == [head_params, head_params]
    with pytest.raises(KeyboardInterrupt):
        T.run_trial(cfg, Recorder(tmp_path / "b", stop_after=2))
    resumed = T.run_trial(cfg, Recorder(tmp_path / "c", restore=str(tmp_path / "b" / "ckpt1")))
    assert _same(full, resumed)


def test_identical_stage1_trial_replays_the_cached_run_instead_of_training(checkpoint, tmp_path):
    cfg = _config(checkpoint, tmp_path)
    first = T.run_trial(cfg, Recorder(tmp_path / "a"))
    rec = Recorder(tmp_path / "b")
    again = T.run_trial(cfg, rec)
    assert [m["epoch"] for m, _ in rec.reports] == [1, 2]
    assert all(m["cache_hit"] == 1.0 for m, _ in rec.reports)
    assert rec.reports[0][1] == [] and rec.reports[1][1] == ["artifacts"]  # no training state: nothing trained
    assert _same({k: v for k, v in again.items() if k != "cache_hit"}, first)


def test_corrupt_checkpoint_warns_and_restarts_from_scratch(checkpoint, tmp_path, caplog):
    cfg = _config(checkpoint, tmp_path, finetune__epochs=1)
    full = T.run_trial(_own_cache(cfg, "full"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    rec = Recorder(tmp_path / "r", restore=str(bad))
    with caplog.at_level(logging.WARNING, logger="trainables.checkpoint"):
        again = T.run_trial(cfg, rec)
    assert "starting from scratch" in caplog.text
    assert [m["epoch"] for m, _ in rec.reports] == [1]
    assert _same(full, again)


def test_nan_fault_raises_nonfinite_loss_error_naming_the_epoch(checkpoint, tmp_path):
    cfg = _config(checkpoint, tmp_path, runtime__fault="nan_at_epoch:2")
    rec = Recorder(tmp_path)
    with pytest.raises(NonFiniteLossError, match="at epoch 2"):
        T.run_trial(cfg, rec)
    assert [m["epoch"] for m, _ in rec.reports] == [1]


def test_crash_fault_fires_on_a_fresh_start_only(checkpoint, tmp_path):
    cfg = _config(checkpoint, tmp_path, runtime__fault="crash_at_epoch:2")
    with pytest.raises(SimulatedCrash):
        T.run_trial(cfg, Recorder(tmp_path / "a"))
    resumed = T.run_trial(cfg, Recorder(tmp_path / "b", restore=str(tmp_path / "a" / "ckpt0")))
    assert resumed["epoch"] == 2


def test_linear_probe_trains_only_the_head_on_cached_features(checkpoint, tmp_path, monkeypatch):
    calls = []
    real_encode = loop.encode
    monkeypatch.setattr(T, "encode", lambda *a, **k: calls.append(1) or real_encode(*a, **k))
    out = T.run_trial(_config(checkpoint, tmp_path, finetune__peft="linear", finetune__head="linear"))
    assert out["trainable_params"] == C * 32 + C
    assert len(calls) == 3  # train, val, test encoded once each; epochs reuse the features


def test_posthoc_trial_reads_the_stage1_entry_and_reports_seed_mean_and_std(checkpoint, tmp_path, monkeypatch):
    T.run_trial(_config(checkpoint, tmp_path, finetune__epochs=1))  # ce, seed 3: now cached
    cfg = _config(checkpoint, tmp_path, finetune__epochs=1, method__name="posthoc_la")
    cfg["replicates"] = [{"finetune": 3}, {"finetune": 4}]
    rec = Recorder(tmp_path / "r")
    out = T.run_trial(cfg, rec)  # trains seed 4 only
    assert len(rec.reports) == 1 and out["replicates"] == 2
    assert {"val/acc", "val/acc_std", "test/bal_acc", "test/bal_acc_std"} <= set(out)
    assert rec.reports[0][1] == ["artifacts"]

    def no_training(*a, **k):
        raise AssertionError("a cached stage-1 result was trained again")

    monkeypatch.setattr(T, "train_stage1", no_training)
    cfg["replicates"] = [{"finetune": 3}]
    single = T.run_trial(cfg)
    assert single["replicates"] == 1 and "val/acc_std" not in single


def test_stage1_result_is_created_once_and_then_read_from_the_cache(checkpoint, tmp_path, monkeypatch):
    cfg = TrialConfig.model_validate(_config(checkpoint, tmp_path, finetune__epochs=1))
    first = T.stage1_result(cfg, cfg.backbone, cfg.method, seed=5)
    monkeypatch.setattr(T, "train_stage1", lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
    again = T.stage1_result(cfg, cfg.backbone, cfg.method, seed=5)
    np.testing.assert_array_equal(first.test_logits, again.test_logits)
    assert again.config["seed"] == 5


def test_warmup_cosine_schedule_rises_linearly_then_decays_to_zero():
    f = loop.warmup_cosine(warmup=4, total=12)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(8) == pytest.approx(0.5) and f(12) == pytest.approx(0.0)


def test_unknown_fault_is_rejected_with_the_accepted_forms():
    with pytest.raises(ValueError, match="nan_at_epoch:N"):
        parse_fault("explode")


def test_toy_world_trial_estimates_q_hat_on_val_and_reports_zero_shot_accuracy(tmp_path):
    cfg = {"dataset": {"name": "toy_lt", "imbalance_ratio": 10, "val_per_class": 5,
                       "world": {"num_classes": 6, "n_max": 40, "test_per_class": 10}},
           "backbone": {"family": "toy", "pretrain": {"corpus_size": 300, "epochs": 1, "width": 32, "depth": 2}},
           "finetune": {"epochs": 1, "batch_size": 32, "head": "text"}, "method": {"name": "gla_train"},
           "runtime": {"cache_dir": str(tmp_path / "cache"), "zoo_dir": str(tmp_path / "zoo"), "num_threads": 1}}
    out = T.run_trial(cfg)
    assert {"zeroshot/val_acc", "zeroshot/test_acc"} <= set(out)
    assert not math.isnan(out["test/p_many"])  # P-groups exist: q_hat was estimated
    entry = Stage1Cache(str(tmp_path / "cache")).get(stage1_key(TrialConfig.model_validate(cfg)))
    assert entry.q_hat.shape == (6,) and entry.q_hat.sum() == pytest.approx(1.0)
    # GLA's inputs are cached: zero-shot logits of val and test, the temperature q_hat was fitted at
    assert entry.zeroshot_val_logits.shape == entry.val_logits.shape
    assert entry.zeroshot_test_logits.shape == entry.test_logits.shape
    assert entry.zeroshot_temperature > 0
    expected = estimate_prior(entry.zeroshot_val_logits / entry.zeroshot_temperature, entry.val_labels)
    np.testing.assert_allclose(entry.q_hat, expected, rtol=1e-6)
    # a gla trial adds the calibrated zero-shot logits to its base model's fine-tuned logits
    out = T.run_trial({**cfg, "method": {"name": "gla", "base_method": "ce"}})
    ce_cfg = TrialConfig.model_validate({**cfg, "method": {"name": "ce"}})
    ce = Stage1Cache(str(tmp_path / "cache")).get(stage1_key(ce_cfg))
    z = (ce.test_logits + ce.zeroshot_test_logits / ce.zeroshot_temperature - np.log(ce.q_hat)
         - np.log(ce.train_counts / ce.train_counts.sum()))
    assert out["test/acc"] == pytest.approx(float((z.argmax(1) == ce.test_labels).mean()))


def test_backdoor_trial_reports_once_over_cached_strata(checkpoint, tmp_path):
    cfg = _config(checkpoint, tmp_path, finetune__epochs=1, method__name="backdoor")
    cfg["backdoor"] = {"confounders": 2, "strata_source": "seeds", "stratum_method": {"name": "ce"},
                       "baselines": [{"name": "ce"}]}
    rec = Recorder(tmp_path / "r")
    out = T.run_trial(cfg, rec)
    assert len(rec.reports) == 1 and out["backdoor/M"] == 2 and "test/bal_acc" in out


def test_test_time_crops_change_the_test_logits_only(checkpoint, tmp_path):
    base = T.train_stage1(TrialConfig.model_validate(_config(checkpoint, tmp_path, finetune__epochs=1)),
                          write_cache=False)
    crops = T.train_stage1(TrialConfig.model_validate(_config(checkpoint, tmp_path, finetune__epochs=1,
                                                              finetune__test_crops=5, finetune__crop_expand=4)),
                           write_cache=False)
    np.testing.assert_array_equal(base.val_logits, crops.val_logits)  # same training, same val transform
    assert crops.test_logits.shape == base.test_logits.shape
    assert not np.allclose(base.test_logits, crops.test_logits)  # five crops of the enlarged image, averaged


def test_configuration_errors_inside_a_trial_are_configuration_errors(tmp_path):
    from trainables.errors import ConfigurationError
    missing = {"dataset": {"name": "cifar100_lt", "root": str(tmp_path / "nowhere")},
               "runtime": {"cache_dir": str(tmp_path / "cache")}, "method": {"name": "ce"}}
    with pytest.raises(ConfigurationError, match="cifar-100-python"):
        T.run_trial(missing)
    names = {"dataset": {"name": "txt_split", "root": str(tmp_path)}, "method": {"name": "ce"},
             "backbone": {"family": "open_clip", "name": "ViT-B-16"}, "finetune": {"head": "text"},
             "runtime": {"cache_dir": str(tmp_path / "cache")}}
    with pytest.raises(ConfigurationError, match="dataset.classnames"):
        T.run_trial(names)
    assert issubclass(ConfigurationError, ValueError)
    no_val = {"dataset": {"name": "toy_lt", "val_per_class": 0, "world": {"num_classes": 4, "n_max": 20}},
              "backbone": {"family": "toy", "pretrain": {"corpus_size": 200, "epochs": 1, "width": 16, "depth": 1}},
              "method": {"name": "ce"}, "runtime": {"cache_dir": str(tmp_path / "c"), "zoo_dir": str(tmp_path / "z")}}
    with pytest.raises(ConfigurationError, match="val_per_class=0"):
        T.run_trial(no_val)
