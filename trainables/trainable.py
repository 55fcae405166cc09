"""The one trainable every trial runs (docs/ARCHITECTURE.md, section 2).

``run_trial(config, reporter)`` validates the config and runs one of three kinds of trial:
- stage 1 (``kind="train"``): fine-tune one backbone, report every epoch, checkpoint, evaluate test
  once at the end, write the stage-1 cache entry;
- stage 2 post-hoc (``kind="posthoc"``): correct the cached logits of the base method, per seed;
- stage 2 ensemble (``kind="ensemble"``): ``trainables.methods.backdoor.run_backdoor`` over
  ``stage1_result``, reported once.
``tune_trainable(config)`` is the same function under Ray Tune. Nothing here needs Ray.

Resuming is exact: every epoch re-seeds the global RNGs and the shuffle generator from
(seed, epoch), and the checkpoint holds the trainable weights, optimizer, scheduler and history.
The pieces live next door: ``trainables.loop`` (epoch, predict, encode, optimizer, loaders,
transforms), ``trainables.checkpoint`` (save/load, RNG state), ``trainables.crt`` (cRT's head
retraining) and ``trainables.faults`` (``runtime.fault`` injection).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Any, Callable, Protocol

import numpy as np
from pydantic import ValidationError
import torch
from torch import nn
from torch.utils.data import TensorDataset

from trainables.artifacts import write_artifacts
from trainables.backbones import build_backbone
from trainables.cache import Stage1Cache, Stage1Result, stage1_key
from trainables.checkpoint import (derive_seed, load_checkpoint, load_trainable_state, restore_rng, save_checkpoint,
                                   seed_everything)
from trainables.config import BackboneConfig, MethodConfig, TrialConfig, apply_replicate, method_config
from trainables.contract import report_objective, tune_result
from trainables.crt import head_retraining_phase
from trainables.data import build_splits
from trainables.errors import ConfigurationError
from trainables.faults import crash_if_due, parse_fault
from trainables.heads import build_head
from trainables.loop import (Classifier, Phase, encode, make_optimizer, make_test_transform, make_transforms,
                             mean_over_crops, pick_device, predict, splits_with, train_one_epoch, with_input_norm)
from trainables.metrics import compute_metrics, prior_error
from trainables.methods import get_method
from trainables.methods.backdoor import check_not_double_corrected, mean_and_std, run_backdoor
from trainables.peft import apply_peft, count_trainable
from trainables.prior import estimate_prior, gla_temperature
from trainables.stages import stage1_config

log = logging.getLogger(__name__)


class Reporter(Protocol):
    """Where a trial sends its results (Ray Tune, a test, or nothing)."""

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        """Receive metrics; ``checkpoint_dir`` exists only during the call (copy what you keep)."""

    def restore_dir(self) -> str | None:
        """The checkpoint directory to resume from, or None to start fresh."""


# --------------------------------------------------------------------------------------------
# Entry points


def run_trial(config: dict, reporter: Reporter | None = None) -> dict:
    """Validate ``config`` (a TrialConfig dict), run the trial, return its final metrics."""
    try:
        cfg = TrialConfig.model_validate(config)
    except ValidationError as exc:  # the same config fails the same way on every retry
        raise ConfigurationError(f"invalid trial config: {exc}") from None
    if cfg.runtime.num_threads:
        torch.set_num_threads(cfg.runtime.num_threads)
    method = get_method(cfg.method.name)
    if method.kind == "train":
        return run_stage1(cfg, reporter)
    if method.kind == "posthoc":
        return run_posthoc(cfg, reporter)
    if method.kind == "ensemble":
        metrics, adjusted, details = run_backdoor(cfg, stage1_result, compute_metrics)
        return report_stage2(reporter, cfg, metrics, adjusted, {"replicates.json": details})
    raise ConfigurationError(f"method {cfg.method.name!r} has kind {method.kind!r}; expected train, posthoc or ensemble")


def tune_trainable(config: dict) -> None:
    """The function Ray Tune runs: ``run_trial`` reporting through ``ray.tune.report``."""
    from ray import tune

    threads = (config.get("runtime") or {}).get("num_threads")
    if not threads:
        threads = int(tune.get_context().get_trial_resources().required_resources.get("CPU", 1))
    torch.set_num_threads(max(1, int(threads)))
    run_trial(config, _TuneReporter())


class _TuneReporter:
    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        from ray import tune

        ckpt = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        objective = report_objective()  # under the platform: few keys for Tune, the rest packed
        if objective is not None:
            metrics = tune_result(metrics, objective)
        tune.report(metrics, checkpoint=ckpt)  # copies the directory to storage before returning

    def restore_dir(self) -> str | None:
        from ray import tune

        ckpt = tune.get_checkpoint()
        return ckpt.to_directory() if ckpt is not None else None


# --------------------------------------------------------------------------------------------
# Stage 1: fine-tune one backbone


def run_stage1(cfg: TrialConfig, reporter: Reporter | None = None) -> dict:
    """Fine-tune, or replay the cached result of the identical fine-tune; racing trials train once.

    The same stage-1 configuration can be both a cell's own trial and a prerequisite of a stage-2
    cell; whichever comes second waits for the first and replays its per-epoch history, marked
    ``cache_hit = 1``, instead of training again.
    """
    cache = Stage1Cache(cfg.runtime.cache_dir)
    key = stage1_key(cfg)
    with cache.lock(key):
        hit = cache.get(key)
        if hit is None:
            return train_stage1(cfg, reporter).metrics
    for epoch_metrics in hit.history[:-1]:
        if reporter is not None:
            reporter.report({**epoch_metrics, "cache_hit": 1.0}, None)
    return report_stage2(reporter, cfg, {**hit.metrics, "cache_hit": 1.0}, hit)


def train_stage1(cfg: TrialConfig, reporter: Reporter | None = None, write_cache: bool = True) -> Stage1Result:
    """Fine-tune ``cfg.backbone`` with ``cfg.method``; report per epoch; return (and cache) the result."""
    ft, rt = cfg.finetune, cfg.runtime
    method = get_method(cfg.method.name)
    device = pick_device(rt.device)
    fault = parse_fault(rt.fault)
    seed_everything(cfg.seed)

    # Data and backbone: a missing file or an unknown model is a configuration error (not retried).
    check_class_names(cfg)
    try:
        splits = build_splits(cfg.dataset, rt)
    except FileNotFoundError as e:
        raise ConfigurationError(str(e)) from e
    if len(splits.val) == 0:
        raise ConfigurationError(
            f"dataset.val_per_class={cfg.dataset.val_per_class}: {cfg.dataset.name} has no validation "
            "image, and a trial selects, stops early and estimates q_hat on validation; set "
            "dataset.val_per_class >= 1 (CIFAR-LT's train split stays the benchmark's either way)")
    C = splits.num_classes
    try:
        backbone = with_input_norm(build_backbone(cfg.backbone, rt, splits.class_names, ft.prompt_templates,
                                                  cfg.dataset.world))
    except FileNotFoundError as e:
        raise ConfigurationError(str(e)) from e
    # Building may pre-train a toy model in this process and use up random numbers: re-seed so a
    # trial's result does not depend on whether the model zoo was warm.
    seed_everything(derive_seed(cfg.seed, 0))
    backbone.encoder.to(device)
    train_tf, eval_tf = make_transforms(backbone, ft.augment, ft.eval_transform)
    test_tf = make_test_transform(backbone, ft)
    split_tf = {"train": eval_tf, "val": eval_tf, "test": test_tf}  # what features are computed with
    images = {"train": splits.train.with_transform(train_tf), "val": splits.val.with_transform(eval_tf),
              "test": splits.test.with_transform(test_tf)}
    use_cache = ft.peft == "linear" and ft.cache_features
    enc = lambda split: encode(backbone.encoder, splits_with(splits, split, split_tf[split]), ft.batch_size,
                               device, ft.amp)

    # Zero-shot classifier: q_hat from the balanced val split (never test), zero-shot accuracies.
    # GLA: calibrate the zero-shot logits (temperature T), estimate q_hat from z / T; the raw
    # zero-shot logits go into the stage-1 cache for GLA's inference (z_ft + z_zs / T - log q_hat ...).
    features: dict[str, torch.Tensor] = {}
    q_hat, zeroshot, zs_logits, zs_temperature = None, {}, {}, None
    true_prior = getattr(backbone, "true_prior", None)
    if backbone.zero_shot_weight is not None:
        for split in ("val", "test"):
            features[split] = enc(split)
            labels = getattr(splits, split).labels
            zs_logits[split] = z = mean_over_crops(backbone.zero_shot_logits(features[split])).numpy()
            zeroshot[f"zeroshot/{split}_acc"] = float((z.argmax(1) == labels).mean())
        zs_temperature = zero_shot_temperature(zs_logits["val"], splits.val.labels)
        q_hat = estimate_prior(zs_logits["val"] / zs_temperature, splits.val.labels)
    if getattr(method, "needs_prior", False) and q_hat is None:
        raise ConfigurationError(f"method {cfg.method.name!r} needs the pre-training prior q_hat, but backbone "
                         f"{cfg.backbone.display()!r} has no zero-shot classifier to estimate it from")

    # Model: PEFT inside the encoder, head on top; a frozen encoder trains on cached features.
    apply_peft(backbone, ft.peft, C, ft)
    head = build_head(ft.head, backbone, C, ft)
    if use_cache:
        for split in ("train", "val", "test"):
            if split not in features:
                features[split] = enc(split)
        data = {s: TensorDataset(features[s], torch.as_tensor(getattr(splits, s).labels)) for s in features}
        model = Classifier(nn.Identity(), head)
    else:
        data = images
        model = Classifier(backbone.encoder, head)
    model.to(device)  # after PEFT: its new modules are created on the CPU
    saved_names = [n for n, p in model.named_parameters() if p.requires_grad]
    logit_scale = ft.cosine_scale if ft.head in ("cosine", "text") else 1.0
    loss_fn = method.make_loss(cfg.method, splits.train_counts, ft.epochs, q_hat, logit_scale)

    # Phases: the configured fine-tune, then for two-phase methods (cRT) class-balanced head retraining.
    two_phase = bool(getattr(method, "two_phase", False))
    total = ft.epochs + (cfg.method.crt_epochs if two_phase else 0)
    phase = Phase(model, data, loss_fn, ft.epochs, balanced=False)
    opt, sched = make_optimizer(phase, ft)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and ft.amp == "fp16")
    history: list[dict] = []
    start = 1

    # Resume.
    state = load_checkpoint(reporter.restore_dir() if reporter else None, stage1_key(cfg))
    if state is not None:
        load_trainable_state(model, state["model"])
        history, start = state["history"], state["epoch"] + 1
        restore_rng(state["rng"])
        log.info("resuming %s at epoch %d", cfg.backbone.display(), start)
        if two_phase and state["epoch"] > ft.epochs:  # inside cRT's phase B: rebuild it, no re-init
            phase = head_retraining_phase(phase, images, splits, ft, device, cfg.method.crt_epochs, reinit_seed=None)
            opt, sched = make_optimizer(phase, ft)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
    resumed = state is not None

    metrics: dict[str, Any] = {}
    for epoch in range(start, total + 1):
        if two_phase and epoch == ft.epochs + 1:
            # cRT phase B: freeze everything, re-initialise the head, train it class-balanced.
            phase = head_retraining_phase(phase, images, splits, ft, device, cfg.method.crt_epochs,
                                          reinit_seed=derive_seed(cfg.seed, -epoch))
            opt, sched = make_optimizer(phase, ft)
        crash_if_due(fault, epoch, resumed)
        seed_everything(derive_seed(cfg.seed, epoch))
        loss, lr = train_one_epoch(phase, opt, sched, scaler, ft, device, epoch,
                                   nan=fault.get("nan") == epoch, seed=derive_seed(cfg.seed, epoch))
        val_logits, val_labels = predict(phase.model, phase.data["val"], ft.batch_size, device, ft.amp)
        metrics = {"epoch": epoch, "train/loss": loss, "train/lr": lr,
                   "trainable_params": count_trainable(phase.model),
                   **compute_metrics(val_logits, val_labels, splits.group_counts, q_hat, "val", true_prior)}
        history.append(dict(metrics))
        if epoch < total:
            report(reporter, metrics, lambda d: save_checkpoint(
                d, model, saved_names, opt, sched, scaler, epoch, history, stage1_key(cfg)))

    # The end: test once on the final model, cache the logits, final report with artifacts.
    if not metrics:  # no epoch ran (epochs = 0, or resumed after the last one)
        val_logits, val_labels = predict(phase.model, phase.data["val"], ft.batch_size, device, ft.amp)
        metrics = {"epoch": total, "trainable_params": count_trainable(phase.model),
                   **compute_metrics(val_logits, val_labels, splits.group_counts, q_hat, "val", true_prior)}
    test_logits, test_labels = predict(phase.model, phase.data["test"], ft.batch_size, device, ft.amp)
    metrics.update(compute_metrics(test_logits, test_labels, splits.group_counts, q_hat, "test", true_prior))
    metrics.update(zeroshot)
    if true_prior is not None:
        metrics.update(prior_error(q_hat, true_prior))
    result = Stage1Result(
        val_logits=val_logits, val_labels=val_labels, test_logits=test_logits, test_labels=test_labels,
        train_counts=np.asarray(splits.train_counts), group_counts=np.asarray(splits.group_counts),
        group_rule=splits.group_rule, class_names=list(splits.class_names), q_hat=q_hat,
        true_prior=None if true_prior is None else np.asarray(true_prior, dtype=np.float64),
        history=history, metrics=dict(metrics), config=cfg.model_dump(mode="json"),
        zeroshot_val_logits=zs_logits.get("val"), zeroshot_test_logits=zs_logits.get("test"),
        zeroshot_temperature=zs_temperature)
    if write_cache:
        Stage1Cache(rt.cache_dir).put(stage1_key(cfg), result)

    def final_checkpoint(d: str) -> None:
        save_checkpoint(d, model, saved_names, opt, sched, scaler, total, history, stage1_key(cfg))
        if rt.artifacts:
            write_artifacts(os.path.join(d, "artifacts"), result)

    report(reporter, metrics, final_checkpoint)
    return result


def check_class_names(cfg: TrialConfig) -> None:
    """ConfigurationError when placeholder class names would reach an open_clip text tower (the
    dry-run reports the same; this guards trials started another way)."""
    from trainables.data.names import placeholder_names

    method = get_method(cfg.method.name)
    if (cfg.backbone.family == "open_clip" and placeholder_names(cfg.dataset)
            and (cfg.finetune.head == "text" or getattr(method, "needs_prior", False))):
        raise ConfigurationError(
            f"dataset.classnames: {cfg.dataset.name} has no class names (placeholders class_0, class_1, ...) "
            f"and finetune.head={cfg.finetune.head!r} / method {cfg.method.name!r} reads them through the "
            "text tower; set dataset.classnames to the class-name file")


def zero_shot_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """GLA's temperature of the zero-shot logits on val; 1 (with a warning in the log) when its search
    cannot reach the accuracy (zero-shot accuracy at or below chance, or an empty split)."""
    try:
        return gla_temperature(logits, labels)
    except ValueError as e:
        log.warning("zero-shot logits left uncalibrated (T = 1): %s", e)
        return 1.0


# --------------------------------------------------------------------------------------------
# Stage 2: post-hoc corrections and the backdoor hook


def stage1_result(trial_cfg: TrialConfig, backbone: BackboneConfig, method: MethodConfig, seed: int) -> Stage1Result:
    """The stage-1 fine-tune of ``backbone`` with ``method`` and ``seed`` on trial_cfg's data (cached, or run now)."""
    cfg = TrialConfig.model_validate(stage1_config(trial_cfg, backbone, method, seed).model_dump())
    return Stage1Cache(cfg.runtime.cache_dir).get_or_create(
        stage1_key(cfg), lambda: train_stage1(cfg, reporter=None, write_cache=False))


def report_stage2(reporter: Reporter | None, cfg: TrialConfig, metrics: dict,
                  artifacts_of: Stage1Result | None = None, json_files: dict | None = None) -> dict:
    """Report a stage-2 trial's metrics once, with ``artifacts/`` of ``artifacts_of`` (its adjusted
    logits) and ``json_files`` (file name -> JSON-able object) written there too."""
    def write(d: str) -> None:
        if cfg.runtime.artifacts and artifacts_of is not None:
            write_artifacts(os.path.join(d, "artifacts"), artifacts_of)
        if cfg.runtime.artifacts and json_files:
            os.makedirs(os.path.join(d, "artifacts"), exist_ok=True)
            for name, obj in json_files.items():
                with open(os.path.join(d, "artifacts", name), "w") as f:
                    json.dump(obj, f, indent=1)
    report(reporter, metrics, write)
    return metrics


def run_posthoc(cfg: TrialConfig, reporter: Reporter | None = None) -> dict:
    """Post-hoc correction of the base method's cached logits, for every replicate in cfg.replicates."""
    method = get_method(cfg.method.name)
    base = method_config(name=cfg.method.base_method)  # its own defaults: a post-hoc tau never retrains it
    check_not_double_corrected(cfg.method.name, base.name, "method.name", "method.base_method")
    per_seed, first = [], None
    for rep in cfg.replicates:
        rc = apply_replicate(cfg, rep)
        r = stage1_result(rc, rc.backbone, base, rc.seed)
        if getattr(method, "needs_prior", False) and r.q_hat is None:
            raise ConfigurationError(f"method {cfg.method.name!r} needs q_hat, but backbone {rc.backbone.display()!r} "
                             f"has no zero-shot classifier; use posthoc_la")
        adjusted = {s: np.asarray(method.adjust(getattr(r, f"{s}_logits"), cfg.method, r.train_counts, r.q_hat,
                                                r.calibrated_zero_shot(s)), dtype=np.float32)
                    for s in ("val", "test")}
        per_seed.append({**compute_metrics(adjusted["val"], r.val_labels, r.group_counts, r.q_hat, "val", r.true_prior),
                         **compute_metrics(adjusted["test"], r.test_labels, r.group_counts, r.q_hat, "test", r.true_prior),
                         **(prior_error(r.q_hat, r.true_prior) if r.true_prior is not None else {})})
        if first is None:
            first = Stage1Result(**{**r.__dict__, "val_logits": adjusted["val"], "test_logits": adjusted["test"]})
    return report_stage2(reporter, cfg, mean_and_std(per_seed), first)


# --------------------------------------------------------------------------------------------
# Pieces


def report(reporter: Reporter | None, metrics: dict, write_checkpoint: Callable[[str], None]) -> None:
    """Send ``metrics`` with a fresh checkpoint directory filled by ``write_checkpoint``; no-op without reporter.

    A directory left empty is not sent: under Tune an empty checkpoint still costs a copy to
    storage and its bookkeeping (about 0.1 s per stage-2 trial without artifacts).
    """
    if reporter is None:
        return
    with tempfile.TemporaryDirectory(prefix="ltbias-ckpt-") as d:
        write_checkpoint(d)
        reporter.report(dict(metrics), d if os.listdir(d) else None)
