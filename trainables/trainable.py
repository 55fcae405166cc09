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
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np
from pydantic import ValidationError
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, TensorDataset, WeightedRandomSampler
from torchvision.transforms import v2

from trainables.artifacts import write_artifacts
from trainables.backbones import build_backbone
from trainables.backbones.base import Backbone
from trainables.cache import Stage1Cache, Stage1Result, stage1_key
from trainables.config import BackboneConfig, MethodConfig, TrialConfig, apply_replicate
from trainables.data import DataSplits, build_splits
from trainables.errors import ConfigurationError, NonFiniteLossError
from trainables.heads import build_head
from trainables.metrics import compute_metrics, prior_error
from trainables.methods import get_method
from trainables.methods.backdoor import check_not_double_corrected, mean_and_std, run_backdoor
from trainables.peft import apply_peft, count_trainable
from trainables.prior import estimate_prior, gla_temperature
from trainables.stages import stage1_config

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "state.pt"
CHECKPOINT_VERSION = 1


class Reporter(Protocol):
    """Where a trial sends its results (Ray Tune, a test, or nothing)."""

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        """Receive metrics; ``checkpoint_dir`` exists only during the call (copy what you keep)."""

    def restore_dir(self) -> str | None:
        """The checkpoint directory to resume from, or None to start fresh."""


class SimulatedCrash(RuntimeError):
    """runtime.fault = crash_at_epoch:N (fault-tolerance tests)."""


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
        if fault.get("crash") == epoch and not resumed:
            raise SimulatedCrash(f"runtime.fault crash_at_epoch:{epoch}: simulated crash at epoch {epoch}")
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


@dataclass
class Phase:
    """What one training phase optimises: a model (inputs -> logits), its data, its loss."""

    model: nn.Module
    data: dict[str, Dataset]
    loss_fn: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
    epochs: int
    balanced: bool  # class-balanced sampling (cRT) instead of uniform shuffling
    first_epoch: int = 1


class Classifier(nn.Module):
    """head(encoder(x)); the encoder is nn.Identity() when training on cached features."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def head_retraining_phase(prev: Phase, images: dict[str, Dataset], splits: DataSplits, ft,
                          device: torch.device, epochs: int, reinit_seed: int | None) -> Phase:
    """cRT's phase B: everything frozen, the head re-initialised (unless resuming) and retrained class-balanced."""
    model: Classifier = prev.model
    model.requires_grad_(False)
    head = model.head
    if reinit_seed is not None:
        torch.manual_seed(reinit_seed)
        for m in head.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    head.requires_grad_(True)
    if ft.cache_features and not isinstance(model.encoder, nn.Identity):
        eval_data = {s: splits_with(splits, s, images["test" if s == "test" else "val"].transform)
                     for s in ("train", "val", "test")}
        feats = {s: encode(model.encoder, ds, ft.batch_size, device, ft.amp) for s, ds in eval_data.items()}
        data = {s: TensorDataset(feats[s], torch.as_tensor(getattr(splits, s).labels)) for s in feats}
        phase_model: nn.Module = Classifier(nn.Identity(), head)
    else:
        data, phase_model = prev.data, model
    # The methods contract: phase B trains with the method's own loss (plain CE for cRT).
    return Phase(phase_model, data, prev.loss_fn, epochs, balanced=True, first_epoch=prev.first_epoch + prev.epochs)


def train_one_epoch(phase: Phase, opt: torch.optim.Optimizer, sched, scaler, ft, device: torch.device,
                    epoch: int, nan: bool, seed: int) -> tuple[float, float]:
    """One pass over the phase's train data; returns (mean loss, last learning rate)."""
    loader = make_loader(phase.data["train"], ft.batch_size, seed, phase.balanced, ft.num_workers, shuffle=True)
    steps = steps_per_epoch(len(loader), ft)
    phase.model.train()
    if ft.peft != "full" and isinstance(phase.model, Classifier):
        # Frozen weights keep their pre-trained normalisation statistics (BatchNorm backbones); a
        # checkpoint holds only trainable tensors, so drifting running stats would also break resume.
        phase.model.encoder.eval()
    total_loss, n_micro, lr = 0.0, 0, opt.param_groups[0]["lr"]
    opt.zero_grad(set_to_none=True)
    for i, (x, y) in enumerate(loader):
        if i >= steps * ft.grad_accum:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, ft.amp):
            logits = phase.model(x)
        loss = phase.loss_fn(logits.float(), y, epoch - phase.first_epoch)
        if nan:
            loss = loss * float("nan")
        value = loss.item()  # one host sync per micro-batch serves the check and the running mean
        if not math.isfinite(value):
            raise NonFiniteLossError(f"training loss is {value} at epoch {epoch}, step {i // ft.grad_accum}; "
                                     f"lower finetune.lr (now {ft.lr}) or set finetune.amp to none/bf16")
        scaler.scale(loss / ft.grad_accum).backward()
        total_loss += value
        n_micro += 1
        if (i + 1) % ft.grad_accum == 0 or i + 1 == min(len(loader), steps * ft.grad_accum):
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            lr = opt.param_groups[0]["lr"]
            sched.step()
    return total_loss / max(n_micro, 1), lr


@torch.no_grad()
def predict(model: nn.Module, data: Dataset, batch_size: int, device: torch.device,
            amp: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """(logits float32 [N, C], labels int64 [N]) of ``model`` on ``data``, in order."""
    model.eval()
    out, labels = [], []
    for x, y in make_loader(data, batch_size, seed=0, balanced=False, num_workers=0, shuffle=False):
        with autocast(device, amp):
            out.append(mean_over_crops(run_on_crops(model, x.to(device))).float().cpu())
        labels.append(y)
    return torch.cat(out).numpy(), torch.cat(labels).numpy().astype(np.int64)


def run_on_crops(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module`` on images [B, 3, H, W], or on crops [B, n, 3, H, W] giving [B, n, ...]."""
    if x.ndim == 5:
        b, n = x.shape[:2]
        out = module(x.flatten(0, 1))
        return out.view(b, n, *out.shape[1:])
    return module(x)


def mean_over_crops(logits: torch.Tensor) -> torch.Tensor:
    """Logits [B, C] as they are; [B, n, C] (one row per test-time crop) averaged over the crops (LIFT)."""
    return logits.mean(dim=1) if logits.ndim == 3 else logits


@torch.no_grad()
def encode(encoder: nn.Module, data: Dataset, batch_size: int, device: torch.device, amp: str = "none") -> torch.Tensor:
    """Features [N, D] float32 (CPU) of ``data`` under ``encoder``, in order."""
    encoder.eval()
    feats = []
    for x, _ in make_loader(data, batch_size, seed=0, balanced=False, num_workers=0, shuffle=False):
        with autocast(device, amp):
            feats.append(run_on_crops(encoder, x.to(device)).float().cpu())  # [B, n, D] for crops
    return torch.cat(feats)


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
    base = cfg.method.model_copy(update={"name": cfg.method.base_method})
    check_not_double_corrected(cfg.method.name, base.name, "method.name", "method.base_method")
    per_seed, first = [], None
    for rep in cfg.replicates:
        rc = apply_replicate(cfg, rep)
        r = stage1_result(rc, rc.backbone, base, rc.seed)
        if getattr(method, "needs_prior", False) and r.q_hat is None:
            raise ConfigurationError(f"method {cfg.method.name!r} needs q_hat, but backbone {cfg.backbone.display()!r} "
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


def save_checkpoint(d: str, model: nn.Module, names: list[str], opt, sched, scaler, epoch: int,
                    history: list[dict], key: str) -> None:
    """Write the resumable state into ``d/state.pt`` (loadable with weights_only=True)."""
    params = dict(model.named_parameters())
    torch.save({
        "version": CHECKPOINT_VERSION, "key": key, "epoch": epoch,
        # trainable parameters plus every buffer (BatchNorm running stats of a full fine-tune)
        "model": {**{n: b.detach().cpu() for n, b in model.named_buffers()},
                  **{n: params[n].detach().cpu() for n in names}},
        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
        "rng": capture_rng(), "history": history,
    }, os.path.join(d, CHECKPOINT_FILE))


def load_checkpoint(d: str | None, key: str) -> dict | None:
    """The state saved in ``d``; None (start fresh, with a warning) when absent, corrupt or of another config."""
    if d is None:
        return None
    path = os.path.join(d, CHECKPOINT_FILE)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("version") != CHECKPOINT_VERSION or state.get("key") != key:
            raise ValueError(f"version {state.get('version')} / key {str(state.get('key'))[:12]} do not "
                             f"match this trial (version {CHECKPOINT_VERSION}, key {key[:12]})")
        return state
    except Exception as e:  # a damaged checkpoint must not kill the trial: retrain from scratch
        log.warning("cannot resume from checkpoint %s (%s: %s); starting from scratch", path, type(e).__name__, e)
        return None


def load_trainable_state(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    """Copy saved trainable parameters and buffers into ``model`` (names must match exactly)."""
    tensors = {**dict(model.named_buffers()), **dict(model.named_parameters())}
    missing = set(saved) - set(tensors)
    if missing:
        raise KeyError(f"checkpoint has tensors the model lacks: {sorted(missing)[:5]}")
    with torch.no_grad():
        for n, t in saved.items():
            tensors[n].copy_(t)


def make_optimizer(phase: Phase, ft) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """SGD(momentum) or AdamW over the phase's trainable parameters, with warm-up + cosine per step."""
    params = [p for p in phase.model.parameters() if p.requires_grad]
    if not params:
        raise ConfigurationError("nothing to train: every parameter is frozen (check finetune.peft and finetune.head)")
    if ft.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=ft.lr, momentum=ft.momentum, weight_decay=ft.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=ft.lr, weight_decay=ft.weight_decay)
    n_batches = math.ceil(len(phase.data["train"]) / ft.batch_size)
    steps = steps_per_epoch(n_batches, ft)
    total = max(1, phase.epochs * steps)
    warmup = int(round(ft.warmup_epochs * steps)) if phase.first_epoch == 1 else 0
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(warmup, total))


def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    """lr factor at optimizer step s: linear warm-up over ``warmup`` steps, then cosine to 0 at ``total``."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


def steps_per_epoch(n_batches: int, ft) -> int:
    """Optimizer steps per epoch (gradient accumulation and max_steps_per_epoch applied)."""
    steps = math.ceil(n_batches / ft.grad_accum)
    return min(steps, ft.max_steps_per_epoch) if ft.max_steps_per_epoch else steps


def make_loader(data: Dataset, batch_size: int, seed: int, balanced: bool, num_workers: int,
                shuffle: bool) -> DataLoader:
    """A loader whose order (and worker seeds) depend only on ``seed``; balanced = cRT's class-balanced sampling."""
    g = torch.Generator().manual_seed(seed)
    sampler = None
    if shuffle and balanced:
        labels = dataset_labels(data)
        counts = np.bincount(labels)
        weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.double)
        sampler = WeightedRandomSampler(weights, num_samples=len(labels), replacement=True, generator=g)
    elif shuffle:
        sampler = RandomSampler(data, generator=g)
    return DataLoader(data, batch_size=batch_size, sampler=sampler, num_workers=num_workers, generator=g,
                      pin_memory=torch.cuda.is_available(), persistent_workers=False)


def dataset_labels(data: Dataset) -> np.ndarray:
    """Labels of a LabeledImages or a (features, labels) TensorDataset."""
    if isinstance(data, TensorDataset):
        return data.tensors[1].numpy()
    return np.asarray(data.labels)


def splits_with(splits: DataSplits, split: str, transform) -> Dataset:
    """``split`` of ``splits`` with ``transform``."""
    return getattr(splits, split).with_transform(transform)


def make_transforms(backbone: Backbone, augment: bool, eval_transform: str = "center") -> tuple[Callable, Callable]:
    """(train, eval) per-image transforms: uint8 [3, H, W] -> uint8 [3, size, size].

    Train: RandomResizedCrop(size) + horizontal flip (LIFT's), or the eval transform without
    ``augment``. Eval: ``center`` = Resize(size) + CenterCrop(size) (an image already at size x size
    passes unchanged); ``lift`` = LIFT's Resize(size * 8 // 7) + CenterCrop(size) (shijxcs/LIFT
    trainer.py, the test transform without test-time ensembling). Scaling to [0, 1] and normalising
    happen on the whole batch, in the model (``InputNorm``), so a worker moves uint8 to the device.
    """
    size = backbone.image_size
    if eval_transform == "lift":
        eval_tf: Callable = v2.Compose([v2.Resize(size * 8 // 7, antialias=True), v2.CenterCrop(size)])
    elif eval_transform == "center":
        fit = v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size)])

        def eval_tf(img: torch.Tensor) -> torch.Tensor:
            return img if tuple(img.shape[-2:]) == (size, size) else fit(img)
    else:
        raise ValueError(f"finetune.eval_transform {eval_transform!r} is unknown; use center or lift")
    if not augment:
        return eval_tf, eval_tf
    return v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]), eval_tf


class TestCrops:
    """LIFT's test-time ensembling input: Resize(size + expand), then FiveCrop or TenCrop(size),
    stacked to uint8 [n, 3, size, size] (shijxcs/LIFT trainer.py, tte_mode fivecrop / tencrop)."""

    def __init__(self, size: int, crops: int, expand: int) -> None:
        self.resize = v2.Resize(size + expand, antialias=True)
        self.crop = v2.FiveCrop(size) if crops == 5 else v2.TenCrop(size)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return torch.stack(list(self.crop(self.resize(img))))


def make_test_transform(backbone: Backbone, ft) -> Callable:
    """The test split's transform: the eval transform, or ``TestCrops`` when finetune.test_crops > 1."""
    if ft.test_crops == 1:
        return make_transforms(backbone, False, ft.eval_transform)[1]
    return TestCrops(backbone.image_size, ft.test_crops, ft.crop_expand)


class InputNorm(nn.Module):
    """uint8 (or [0, 1] float) images [B, 3, H, W] -> (x - mean) / std, batched on the model's device."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        return (x - self.mean) / self.std


def with_input_norm(backbone: Backbone) -> Backbone:
    """The backbone whose encoder takes uint8 batches (``InputNorm`` in front of the encoder)."""
    backbone.encoder = nn.Sequential(InputNorm(backbone.mean, backbone.std), backbone.encoder)
    return backbone


def autocast(device: torch.device, amp: str):
    """bf16/fp16 autocast on CUDA; a no-op elsewhere (CPU runs stay in float32)."""
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=device.type == "cuda" and amp != "none")


def pick_device(name: str) -> torch.device:
    """runtime.device -> torch.device; 'auto' takes CUDA when present."""
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("runtime.device is 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def parse_fault(fault: str | None) -> dict[str, int]:
    """runtime.fault 'nan_at_epoch:N' / 'crash_at_epoch:N' -> {'nan': N} / {'crash': N}."""
    if not fault:
        return {}
    kind, _, n = fault.partition(":")
    names = {"nan_at_epoch": "nan", "crash_at_epoch": "crash"}
    if kind not in names or not n.isdigit():
        raise ConfigurationError(f"runtime.fault {fault!r} is not understood; use nan_at_epoch:N or crash_at_epoch:N")
    return {names[kind]: int(n)}


def derive_seed(seed: int, epoch: int) -> int:
    """A seed for (trial seed, epoch), so that each epoch's randomness is independent of the past."""
    return (seed * 1_000_003 + epoch * 7_919) % (2**31 - 1)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> dict:
    """RNG states as tensors and plain types (so torch.load(weights_only=True) accepts them)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "python": {"version": random.getstate()[0], "state": torch.tensor(random.getstate()[1], dtype=torch.int64)},
    }


def restore_rng(rng: dict) -> None:
    """Inverse of ``capture_rng``."""
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    n = rng["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    random.setstate((rng["python"]["version"], tuple(int(v) for v in rng["python"]["state"]), None))
