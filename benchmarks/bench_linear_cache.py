"""Measure 4: a linear-probe trial on cached features vs re-encoding every epoch (goal >= 10x).

The same ``run_trial`` (finetune.peft = linear) with ``cache_features`` true and false, same
epochs, each from an empty stage-1 cache; repetitions alternate and the ratio is of the medians of
whole trials (time inside the epoch loops is reported beside it).
"""

from __future__ import annotations

from pathlib import Path

from benchmarks import median, result, rounded, toy_trial
from benchmarks.bench_throughput import trainable_run

NAME = "linear_probe_feature_cache"


def run(workdir: Path, quick: bool = False) -> dict:
    """Ratio = trial seconds re-encoding / trial seconds on cached features."""
    epochs, repeats = (2, 1) if quick else (10, 3)
    world = {"num_classes": 6, "n_max": 40, "test_per_class": 10} if quick else \
        {"num_classes": 20, "n_max": 200, "test_per_class": 30}
    configs = {flag: toy_trial(workdir, dataset={"world": world, "imbalance_ratio": 100},
                               finetune={"peft": "linear", "head": "linear", "epochs": epochs, "lr": 0.5,
                                         "batch_size": 128, "augment": False, "cache_features": flag})
               for flag in (True, False)}
    trainable_run(configs[True])  # warm-up: the zoo model
    times: dict[bool, dict[str, list[float]]] = {f: {"total": [], "train": []} for f in configs}
    for _ in range(repeats):
        for flag, config in configs.items():
            t = trainable_run(config)
            times[flag]["total"].append(t["total"])
            times[flag]["train"].append(t["train"])
    ratio = median(times[False]["total"]) / median(times[True]["total"])
    details = {
        "headline": "whole run_trial (setup, epochs, validation, test, checkpoints)",
        "epochs": epochs, "repeats": repeats, "world": world,
        "cached_trial_seconds": times[True]["total"], "reencode_trial_seconds": times[False]["total"],
        "cached_epoch_loop_seconds": times[True]["train"], "reencode_epoch_loop_seconds": times[False]["train"],
        "epoch_loop_ratio": median(times[False]["train"]) / max(median(times[True]["train"]), 1e-9),
    }
    return result(NAME, goal_op=">=", goal_value=10, value=ratio, unit="x",
                  measure="linear-probe trial time re-encoding / on cached features",
                  details=rounded(details))
