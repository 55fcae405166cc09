"""Measure 1: the trainable's training throughput vs a bare PyTorch loop (goal >= 0.9).

Both sides train the same toy ViT + AdaptFormer + cosine head, built by the trainable's own
builders from the same seed, for the same number of steps of the same batch size on one thread.
The bare loop is what a user would write: the training split transformed once into tensors, then
``for x, y in loader: loss.backward(); opt.step()``. The trainable side is ``run_trial``; its
epoch loop (``train_one_epoch``, timed by wrapping it) is the headline, and its whole wall time
including one-off setup, validation, test and checkpoints is reported beside it.
Repetitions alternate bare / trainable, and the ratio is of the medians.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from benchmarks import median, result, rounded, timed, toy_trial
from trainables import trainable as T
from trainables.backbones import build_backbone
from trainables.checkpoint import seed_everything
from trainables.config import TrialConfig
from trainables.data import build_splits
from trainables.heads import build_head
from trainables.loop import Classifier, make_transforms, with_input_norm
from trainables.peft import apply_peft

NAME = "trainable_throughput"


class NullReporter:
    """Accepts reports and discards them; the trainable still writes its checkpoints (as under Tune)."""

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        """Discard ``metrics``."""

    def restore_dir(self) -> str | None:
        """Never resume."""
        return None


def build_model(cfg: TrialConfig) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """(model, train images [N,3,H,W] uint8, labels [N]) exactly as ``train_stage1`` builds them."""
    ft, rt = cfg.finetune, cfg.runtime
    seed_everything(cfg.seed)
    splits = build_splits(cfg.dataset, rt)
    backbone = with_input_norm(build_backbone(cfg.backbone, rt, splits.class_names, ft.prompt_templates,
                                              cfg.dataset.world))
    train_tf, _ = make_transforms(backbone, ft.augment)
    apply_peft(backbone, ft.peft, splits.num_classes, ft)
    head = build_head(ft.head, backbone, splits.num_classes, ft)
    data = splits.train.with_transform(train_tf)
    x = torch.stack([data[i][0] for i in range(len(data))])
    return Classifier(backbone.encoder, head), x, torch.as_tensor(splits.train.labels)


def bare_loop(cfg: TrialConfig, steps: int) -> float:
    """Seconds of ``cfg.finetune.epochs`` epochs of ``steps`` plain training steps (setup excluded)."""
    ft = cfg.finetune
    model, x, y = build_model(cfg)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=ft.lr,
                          momentum=ft.momentum, weight_decay=ft.weight_decay)
    loader = DataLoader(TensorDataset(x, y), batch_size=ft.batch_size, shuffle=True)
    times: dict = {}
    with timed(times, "train"):
        model.train()
        for _ in range(ft.epochs):
            for i, (xb, yb) in enumerate(loader):
                if i >= steps:
                    break
                loss = F.cross_entropy(model(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return times["train"]


def trainable_run(config: dict) -> dict:
    """Seconds of run_trial as a whole and inside its ``train_one_epoch`` calls (fresh cache: it trains)."""
    times: dict = {}
    original = T.train_one_epoch

    def timed_epoch(*args, **kwargs):
        with timed(times, "train"):
            return original(*args, **kwargs)

    T.train_one_epoch = timed_epoch
    try:
        with tempfile.TemporaryDirectory(prefix="bench-cache-") as cache:
            config = {**config, "runtime": {**config["runtime"], "cache_dir": cache}}
            with timed(times, "total"):
                T.run_trial(config, NullReporter())
    finally:
        T.train_one_epoch = original
    return times


def run(workdir: Path, quick: bool = False) -> dict:
    """Alternate bare loop and trainable; ratio = trainable images/s over bare images/s (epoch loop)."""
    epochs, repeats = (1, 1) if quick else (3, 5)
    world = {"num_classes": 10, "n_max": 60 if quick else 300, "test_per_class": 10}
    probe = TrialConfig.model_validate(toy_trial(workdir, dataset={"world": world}))
    n_train = len(build_splits(probe.dataset, probe.runtime).train)
    batch = 16 if quick else 64
    steps = max(1, n_train // batch)  # whole batches only, so both sides see equal batches
    config = toy_trial(workdir, dataset={"world": world},
                       finetune={"epochs": epochs, "batch_size": batch, "max_steps_per_epoch": steps})
    cfg = TrialConfig.model_validate(config)
    torch.set_num_threads(1)
    trainable_run(config)  # warm-up: pre-trains the zoo model once, warms allocator and kernels
    bare, train, total = [], [], []
    for _ in range(repeats):
        bare.append(bare_loop(cfg, steps))
        t = trainable_run(config)
        train.append(t["train"])
        total.append(t["total"])
    images = epochs * steps * batch
    ratio = median(bare) / median(train)
    details = {
        "headline": "trainable train_one_epoch time vs bare loop time, same steps (setup excluded)",
        "images_per_epoch_trained": steps * batch, "epochs": epochs, "steps_per_epoch": steps,
        "batch_size": batch, "threads": 1, "repeats": repeats, "train_split_size": n_train,
        "model": "toy ViT width 64 depth 4 patch 8 on 32x32 + AdaptFormer + cosine head",
        "bare_seconds": bare, "trainable_epoch_loop_seconds": train, "trainable_run_trial_seconds": total,
        "bare_images_per_s": images / median(bare), "trainable_images_per_s": images / median(train),
        "ratio_including_setup_val_test_checkpoints": median(bare) / median(total),
        "note": "the bare loop trains on uint8 tensors stacked once; the trainable loads images through "
                "its DataLoader every epoch (augment false here, as in the demo; images already at the "
                "model's size skip the per-image transform; normalisation runs on the batch in the model)",
    }
    return result(NAME, goal_op=">=", goal_value=0.9, value=ratio, unit="x",
                  measure="trainable training throughput / bare PyTorch loop throughput",
                  details=rounded(details))
