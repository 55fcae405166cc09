"""Measure 7: open_clip ViT-B-16 + AdaptFormer training throughput and model FLOPs utilisation.

On a GPU: AMP bf16, images per second in training for four variants (eager, channels-last,
torch.compile, both), MFU = counted FLOPs per image x images/s / the GPU's dense bf16 peak, and
the trainable's own data loader alone (no model) in images/s, to show loading is not the bottleneck.
Without a GPU the same code runs on the CPU at a reduced size (fp32, no compile) and says so: MFU
is not applicable. FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on one
forward + backward (frozen weights get no weight-gradient matmuls, so this is what the step does).
The model is built by the trainable's own builders (``build_backbone``, ``apply_peft``, ``build_head``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode
from torchvision.transforms import v2

from benchmarks import result, rounded
from trainables.backbones import build_backbone
from trainables.config import BackboneConfig, FinetuneConfig, RuntimeConfig
from trainables.data.base import LabeledImages
from trainables.heads import build_head
from trainables.loop import Classifier, autocast, make_loader
from trainables.peft import apply_peft

NAME = "gpu_vit_b16_adaptformer"
NUM_CLASSES = 100
# Dense bf16 tensor-core peak, FLOP/s, by a substring of torch.cuda.get_device_name().
BF16_PEAK = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12,
             "A10G": 70e12, "L4": 121e12}
NO_GPU = "no GPU available: CPU run at reduced size, MFU not applicable"


def bf16_peak(device_name: str) -> float | None:
    """The dense bf16 peak of ``device_name`` (first matching key, most specific first), or None."""
    for key in sorted(BF16_PEAK, key=len, reverse=True):
        if key in device_name:
            return BF16_PEAK[key]
    return None


def build_model(device: torch.device, image_size: int | None, channels_last: bool) -> tuple[torch.nn.Module, int]:
    """(ViT-B-16 image tower + AdaptFormer + cosine head on ``device``, input size); random weights."""
    kwargs = {"force_image_size": image_size} if image_size else {}
    cfg = BackboneConfig(family="open_clip", name="ViT-B-16", model_kwargs=kwargs)
    names = [f"class {i}" for i in range(NUM_CLASSES)]
    ft = FinetuneConfig(peft="adaptformer", head="cosine")
    torch.manual_seed(0)
    backbone = build_backbone(cfg, RuntimeConfig(), names, ft.prompt_templates)
    apply_peft(backbone, ft.peft, NUM_CLASSES, ft)
    model = Classifier(backbone.encoder, build_head(ft.head, backbone, NUM_CLASSES, ft)).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, backbone.image_size


def flops_per_image(model: torch.nn.Module, size: int, device: torch.device) -> float:
    """Counted FLOPs of one training step's forward + backward, per image (batch of 2)."""
    x = torch.randn(2, 3, size, size, device=device)
    y = torch.zeros(2, dtype=torch.long, device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2


def train_images_per_s(model: torch.nn.Module, size: int, device: torch.device, batch: int, steps: int,
                       warmup: int, channels_last: bool, compile_model: bool) -> float:
    """Images per second of AdaptFormer training steps (bf16 autocast on CUDA) on synthetic batches."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    step_model = torch.compile(model) if compile_model else model
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    model.train()

    def step() -> None:
        with autocast(device, "bf16"):
            logits = step_model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def loader_images_per_s(size: int, batch: int, batches: int, num_workers: int) -> float:
    """Images per second of the trainable's loader (make_loader + augmenting transform), no model."""
    rng = np.random.default_rng(0)
    n = batch * batches
    raw = torch.from_numpy(rng.integers(0, 256, (min(n, 512), 3, size + size // 7, size + size // 7), dtype=np.uint8))
    data = LabeledImages(np.arange(n) % NUM_CLASSES, _Cycle(raw))
    tf = v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(),
                     v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5] * 3, [0.5] * 3)])
    loader = make_loader(data.with_transform(tf), batch, seed=0, balanced=False, num_workers=num_workers,
                         shuffle=True)
    start = time.perf_counter()
    seen = sum(len(x) for x, _ in loader)
    return seen / (time.perf_counter() - start)


class _Cycle:
    """``load(i)`` over a small bank of images (picklable for loader workers)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __call__(self, i: int) -> torch.Tensor:
        return self.images[i % len(self.images)].clone()


def run(workdir: Path, quick: bool = False) -> dict:
    """Images/s and MFU per variant on a GPU; a reduced CPU run (and a clear note) without one."""
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    if gpu:
        image_size, batch, steps, warmup = None, 128, 20, 3
        variants = [(cl, comp) for comp in (False, True) for cl in (False, True)]
        workers, loader_batches = min(8, os.cpu_count() or 1), 30
    else:
        image_size, batch, steps, warmup = (64, 2, 1, 1) if quick else (224, 2, 2, 1)
        variants = [(False, False), (True, False)]  # compiling ViT-B on a shared 2-core CPU takes minutes
        workers, loader_batches = 0, 2 if quick else 8
    rows, flops, size = [], None, None
    for channels_last, compile_model in variants:
        model, size = build_model(device, image_size, channels_last)
        if flops is None:
            flops = flops_per_image(model, size, device)
        ips = train_images_per_s(model, size, device, batch, steps, warmup, channels_last, compile_model)
        rows.append({"channels_last": channels_last, "torch_compile": compile_model, "images_per_s": ips})
        del model
    name = torch.cuda.get_device_name() if gpu else "cpu"
    peak = bf16_peak(name) if gpu else None
    for row in rows:
        row["mfu"] = row["images_per_s"] * flops / peak if peak else None
    loader_ips = loader_images_per_s(size, batch, loader_batches, workers)
    best = max(rows, key=lambda r: r["images_per_s"])
    details = {
        "device": name, "status": "GPU run" if gpu else NO_GPU,
        "precision": "bf16 autocast" if gpu else "fp32 (CPU)", "image_size": size, "batch_size": batch,
        "steps_timed": steps, "warmup_steps": warmup, "bf16_peak_flops": peak,
        "flops_per_image_fwd_bwd (FlopCounterMode)": flops, "variants": rows,
        "best_variant": {k: best[k] for k in ("channels_last", "torch_compile")},
        "loader_alone_images_per_s": loader_ips, "loader_workers": workers,
        "loader_over_best_training_throughput": loader_ips / best["images_per_s"],
        "threads": torch.get_num_threads(),
    }
    if not gpu:
        details["torch_compile"] = "skipped on CPU: compiling ViT-B-16 takes minutes on a shared 2-core machine"
    value = best["mfu"] if gpu and peak else None
    return result(NAME, goal_op=None, goal_value=None, value=value, unit="MFU",
                  measure="model FLOPs utilisation (bf16) of the best variant" if gpu else NO_GPU,
                  goal_note="no goal set; loader_over_best_training_throughput > 1 means loading keeps up",
                  details=rounded(details, 6))
