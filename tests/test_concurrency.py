"""Issue 15: stage-2 trials keep every allowed slot busy (the stall); no empty checkpoints.

A post-hoc search emitted behind its stage-1 prerequisites must not run on one Ray worker: when
the searcher held stage-2 trials back until stage 1 finished, Tune kept one worker and every
short stage-2 trial finished before a second worker process had started, so 52 of 54 trials of a
search ran in the same process. Tune reports each result's worker ``pid``; with two slots no
worker may have run more than three quarters of the trials.
"""

from __future__ import annotations

import argparse
import collections
import json
import os

import pytest
import ray

from platform.execute import run_study
from plans import plan_from_text

STUDY = """
name: stage2-concurrency
dataset: {{name: toy_lt, imbalance_ratio: 10, val_per_class: 5,
          world: {{num_classes: 5, n_max: 40, test_per_class: 10, image_size: 16}}}}
backbones: [{{family: toy, pretrain: {{corpus_size: 500, epochs: 1, width: 32, depth: 1}}}}]
finetune: {{peft: linear, head: linear, epochs: 1, lr: 0.5, batch_size: 64, augment: false}}
method: {{name: posthoc_la, base_method: ce}}
search:
  algorithm: random
  num_samples: 14
  space:
    method.tau: {{float: [0.0, 2.0]}}
scheduler: {{fifo: {{}}}}
resources: {{cpu: 1, gpu: 0}}
max_concurrent: 2
max_failures: 0
seeds: [0, 1]
runtime: {{num_threads: 1, artifacts: false}}
storage: {tmp}/storage
tracking_uri: sqlite:///{tmp}/mlflow.db
"""


def trial_pids(experiment: str) -> dict[str, int]:
    """Tune trial folder -> the worker pid of its results (from each trial's result.json)."""
    out = {}
    for name in sorted(os.listdir(experiment)):
        path = os.path.join(experiment, name, "result.json")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as fh:
                pids = {json.loads(line)["pid"] for line in fh if line.strip()}
            assert len(pids) == 1, f"{name} reported from several workers: {pids}"
            out[name] = pids.pop()
    return out


@pytest.mark.slow
def test_stage2_search_keeps_both_slots_busy(tmp_path):
    plan = plan_from_text(STUDY, tmp_path)
    assert [c.kind for c in plan.cells] == ["posthoc"] and len(plan.prerequisites) == 2
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        outcome = run_study(plan, argparse.Namespace(address=None, resume=False),
                            progress_interval_s=60)
    finally:
        ray.shutdown()
    assert (outcome.total_trials, outcome.failed_trials) == (plan.total_trials, 0) == (16, 0)
    pids = trial_pids(str(tmp_path / "storage" / plan.study.name))
    assert len(pids) == plan.total_trials
    per_worker = collections.Counter(pids.values())
    assert max(per_worker.values()) <= 0.75 * plan.total_trials, per_worker


def test_a_report_with_nothing_to_checkpoint_sends_no_checkpoint(tmp_path):
    from trainables.trainable import report

    sent = []

    class Keep:
        def report(self, metrics, checkpoint_dir):
            sent.append((metrics, sorted(os.listdir(checkpoint_dir)) if checkpoint_dir else None))

    report(Keep(), {"val/acc": 0.5}, lambda d: None)  # a stage-2 trial without artifacts
    report(Keep(), {"val/acc": 0.6}, lambda d: open(os.path.join(d, "state.pt"), "w").close())
    assert sent == [({"val/acc": 0.5}, None), ({"val/acc": 0.6}, ["state.pt"])]
