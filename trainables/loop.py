"""The training loop's pieces: one epoch, prediction and feature encoding, optimizer and schedule,
loaders, per-image transforms and the model around the backbone (docs/ARCHITECTURE.md, section 2).

A ``Phase`` is what one training phase optimises (model, data, loss, epochs, sampling);
``train_one_epoch`` runs one pass over its train data, ``predict`` / ``encode`` evaluate in order,
``make_optimizer`` builds SGD or AdamW with warm-up + cosine per optimizer step, ``make_loader``
gives a loader whose order depends only on a seed, and ``make_transforms`` / ``make_test_transform``
/ ``with_input_norm`` prepare the images. ``trainables.trainable`` composes them into a trial.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, TensorDataset, WeightedRandomSampler
from torchvision.transforms import v2

from trainables.backbones.base import Backbone
from trainables.data import DataSplits
from trainables.errors import ConfigurationError, NonFiniteLossError
from trainables.faults import inject_nan


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
        loss = inject_nan(loss, nan)
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
