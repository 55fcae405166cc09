"""The backdoor adjustment as a trial: stage-2 over real (tiny) toy fine-tunes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trainables import trainable as T
from trainables.cache import Stage1Cache, stage1_key
from trainables.config import TrialConfig
from trainables.stages import prerequisites

REPO = Path(__file__).resolve().parents[1]
TINY_PRETRAIN = {"corpus_size": 400, "epochs": 1, "width": 32, "depth": 1}


def _config(tmp_path: Path, **backdoor) -> dict:
    views = ["top", "bottom", "left"]
    return {
        "dataset": {"name": "toy_lt", "imbalance_ratio": 10, "val_per_class": 6,
                    "world": {"num_classes": 6, "n_max": 40, "test_per_class": 10}},
        "backbone": {"family": "toy", "pretrain": {"view": "top", **TINY_PRETRAIN}},
        "pool": [{"family": "toy", "pretrain": {"view": v, **TINY_PRETRAIN}} for v in views],
        "finetune": {"epochs": 1, "batch_size": 64, "peft": "adaptformer", "head": "text", "augment": False},
        "method": {"name": "backdoor"},
        "backdoor": {"confounders": 2, "baselines": [{"name": "la"}], **backdoor},
        "runtime": {"cache_dir": str(tmp_path / "cache"), "zoo_dir": str(tmp_path / "zoo"),
                    "num_threads": 1, "artifacts": False},
    }


def test_backdoor_with_one_stratum_reproduces_the_stratum_model(tmp_path):
    cfg = _config(tmp_path, confounders=1)
    out = T.run_trial(cfg)
    stratum = Stage1Cache(cfg["runtime"]["cache_dir"]).get(stage1_key(TrialConfig.model_validate(prerequisites(cfg)[0])))
    assert stratum is not None
    assert out["val/acc"] == pytest.approx(float((stratum.val_logits.argmax(1) == stratum.val_labels).mean()))
    assert out["test/acc"] == pytest.approx(float((stratum.test_logits.argmax(1) == stratum.test_labels).mean()))


def test_prerequisites_cover_every_pool_member_replicate_and_baseline(tmp_path):
    cfg = _config(tmp_path)
    cfg["replicates"] = [{"finetune": 0}, {"finetune": 1}]
    pre = prerequisites(cfg)
    assert len(pre) == 6
    assert {(p["backbone"]["pretrain"]["view"], p["seed"]) for p in pre} == {
        (v, s) for v in ("top", "bottom", "left") for s in (0, 1)}
    assert all(p["method"]["name"] == "la" for p in pre)
    cfg["backdoor"]["baselines"] = [{"name": "ce"}, {"name": "gla", "base_method": "ce"}]
    pre = prerequisites(cfg)  # + ce on every member (gla corrects ce's logits: no fine-tune of its own)
    assert sorted(p["method"]["name"] for p in pre) == ["ce"] * 6 + ["la"] * 6
    cfg["backdoor"]["baselines"] = [{"name": "la"}]
    cfg["backdoor"]["strata_source"] = "seeds"
    assert sorted(p["seed"] for p in prerequisites(cfg) if p["backbone"]["pretrain"]["view"] == "top") == [
        0, 1, 1000, 1001, 2000, 2001]


def test_replicates_set_world_pretraining_and_fine_tuning_seeds(tmp_path):
    cfg = _config(tmp_path)
    cfg["pool"][1]["pretrain"]["seed"] = 7
    cfg["replicates"] = [{"world": 3, "pretrain": 2, "finetune": 5}]
    pre = [p for p in prerequisites(cfg)]
    assert {p["dataset"]["world"]["seed"] for p in pre} == {3} and {p["seed"] for p in pre} == {5}
    seeds = sorted((p["backbone"]["pretrain"]["seed"], p["backbone"]["pretrain"]["prior_seed"]) for p in pre)
    # each member keeps its own prior (prior seed pinned to its base seed) and pre-trains anew
    assert seeds == [(2000, 0), (2000, 0), (2007, 7)]


def test_selection_on_validation_ignores_test_labels(tmp_path):
    """Selecting M and weighting reads validation only: corrupting test labels changes nothing selected."""
    candidates = [{"confounders": m, "weighting": w} for m in (1, 2, 3) for w in ("uniform", "fitted")]

    def select() -> tuple[dict, list[float]]:
        vals = [T.run_trial(_config(tmp_path, **c))["val/acc"] for c in candidates]
        return candidates[int(np.argmax(vals))], vals

    chosen, vals = select()
    cache = Stage1Cache(str(tmp_path / "cache"))
    entries = [p for p in Path(cache.root).rglob("meta.json")]
    assert len(entries) == 3  # the three strata (also the la baselines), fine-tuned once for all six candidates
    rng = np.random.default_rng(0)
    for meta in entries:  # shuffle the cached test labels of every stratum
        r = cache.get(meta.parent.name)
        r.test_labels = rng.permutation(r.test_labels)
        shutil.rmtree(meta.parent)
        cache.put(meta.parent.name, r)
    chosen_again, vals_again = select()
    assert vals_again == vals and chosen_again == chosen


_RACER = """
import json, sys
from trainables import trainable as T
calls = []
original = T.train_stage1
def counting(cfg, *a, **k):
    with open(sys.argv[2], "a") as fh:
        fh.write(json.dumps([cfg.backbone.pretrain.view, cfg.seed]) + "\\n")
    return original(cfg, *a, **k)
T.train_stage1 = counting
out = T.run_trial(json.loads(sys.argv[1]))
print(json.dumps(out["val/acc"]))
"""


def test_racing_stage2_trials_fine_tune_a_missing_stratum_once(tmp_path):
    cfg = _config(tmp_path, weighting="uniform")
    counter = tmp_path / "fine_tunes.log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, json.dumps(cfg), str(counter)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert outs[0] == outs[1]
    tuned = [tuple(json.loads(line)) for line in counter.read_text().splitlines()]
    # each stratum and baseline member once, though both trials needed all of them
    assert sorted(tuned) == [("bottom", 0), ("left", 0), ("top", 0)]


def test_backdoor_reports_the_paired_gain_over_the_best_single_member(tmp_path):
    cfg = _config(tmp_path, confounders=3)
    cfg["replicates"] = [{"finetune": 0}, {"finetune": 1}]
    out = T.run_trial(cfg)
    assert out["replicates"] == 2 and out["backdoor/M"] == 3
    cache = Stage1Cache(cfg["runtime"]["cache_dir"])
    best, mean = [], []
    for seed in (0, 1):
        singles = [cache.get(stage1_key(TrialConfig.model_validate(p))) for p in prerequisites(cfg) if p["seed"] == seed]
        val = [float((r.val_logits.argmax(1) == r.val_labels).mean()) for r in singles]
        test = [float((r.test_logits.argmax(1) == r.test_labels).mean()) for r in singles]
        best.append(test[int(np.argmax(val))])
        mean.append(float(np.mean(test)))
    assert out["baseline/best_single/acc"] == pytest.approx(np.mean(best))
    assert out["baseline/mean_single/acc"] == pytest.approx(np.mean(mean))
    assert out["gain/test/acc"] == pytest.approx(out["test/acc"] - out["baseline/best_single/acc"])
    # two replicates: the interval is a paired bootstrap over test images, around the mean gain
    assert out["gain/test/acc_lo"] <= out["gain/test/acc"] <= out["gain/test/acc_hi"]
    assert np.isfinite(out["gain/test/acc_std"]) and np.isfinite(out["baseline/best_single/p_true_few"])
    assert -1 <= out["pool/prior_spearman"] <= 1


def test_a_gla_baseline_is_scored_with_gla_s_inference_on_every_member(tmp_path):
    """GLA's baseline adds each member's calibrated zero-shot logits (z_ft + z_zs / T - log q_hat -
    log p_s); the backdoor trial's mean single model is the mean of exactly those accuracies."""
    from trainables.config import method_config
    from trainables.methods import get_method

    cfg = _config(tmp_path, confounders=1, baselines=[{"name": "gla", "base_method": "ce"}])
    out = T.run_trial(cfg)
    cache = Stage1Cache(cfg["runtime"]["cache_dir"])
    gla, mcfg = get_method("gla"), method_config(name="gla", base_method="ce")
    accs = []
    for p in prerequisites(cfg):
        if p["method"]["name"] != "ce":
            continue
        r = cache.get(stage1_key(TrialConfig.model_validate(p)))
        z = gla.adjust(r.test_logits, mcfg, r.train_counts, r.q_hat, r.calibrated_zero_shot("test"))
        accs.append(float((np.asarray(z).argmax(1) == r.test_labels).mean()))
    assert len(accs) == 3
    assert out["baseline/mean_single/acc"] == pytest.approx(np.mean(accs))
