"""Toy foundation models: small timm ViTs pre-trained, supervised, on a corpus of the toy world
with their own label prior and view, kept in a content-addressed zoo.

The pre-training prior is the knob for *parameter imbalance*: p_pre(rank r) proportional to
IR ** (-r / (C - 1)), so max/min = ``pretrain.imbalance_ratio``; ``alignment`` maps pre-training
ranks to downstream classes. ``view`` is the incomplete semantic factor: regions outside the view
show a random vocabulary part unrelated to the label, so the model learns to ignore them.

Zoo layout: ``<zoo_dir>/<key>/model.safetensors`` + ``meta.json`` (true prior, train time,
zero-shot accuracy), key = sha256 of the world's image-defining fields, the pre-training config
and ``ZOO_VERSION``. An entry is written to a temporary directory and renamed into place under a
file lock, so racing processes train it once and readers never see half an entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from filelock import FileLock
from safetensors.torch import load_file, save_file
from timm.models.vision_transformer import VisionTransformer

from trainables.config import ToyPretrainConfig, ToyWorldConfig
from trainables.world.data import balanced_labels, instance_ids
from trainables.world.render import make_world

log = logging.getLogger(__name__)

# Bump when a change here or in render.py changes what a (world, pretrain) config trains to.
ZOO_VERSION = "toy-zoo-1"
# Fields of ToyWorldConfig that only size the downstream splits: they do not change a model.
_DOWNSTREAM_ONLY = {"n_max", "test_per_class"}
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
ZERO_SHOT_VAL_PER_CLASS = 20
BATCH_SIZE = 128
WARMUP_FRACTION = 0.05


REFERENCE_PRIOR_SEED = 0
"""``prior_agreement`` mixes a member's ranking with the one ``alignment`` gives at this prior seed."""


def _alignment_ranking(num_classes: int, alignment: str, prior_seed: int) -> np.ndarray:
    if alignment == "aligned":
        return np.arange(num_classes)
    if alignment == "reversed":
        return np.arange(num_classes)[::-1].copy()
    return np.random.default_rng([prior_seed, 0x5EED]).permutation(num_classes)


def rank_to_class(num_classes: int, pre: ToyPretrainConfig) -> np.ndarray:
    """The downstream class holding each pre-training frequency rank (rank 0 = most frequent).

    Without ``prior_agreement``: ``alignment`` alone ('shuffled' draws a permutation from the
    member's prior seed). With ``prior_agreement = rho``: a Gaussian copula. Each class y gets the
    normal score s_ref(y) = Phi^-1((C - r_ref(y) - 0.5) / C) of its rank in the reference ranking
    (``alignment`` at ``REFERENCE_PRIOR_SEED``), and the member ranks classes by
    rho * s_ref(y) + sqrt(1 - rho^2) * e(y), e ~ N(0, 1) drawn from its prior seed: rho = 1 gives the
    reference prior, 0 an independent one, -1 the reversed reference; two members with
    agreements rho_a, rho_b have latent correlation rho_a * rho_b.
    """
    C = num_classes
    if pre.prior_agreement is None:
        return _alignment_ranking(C, pre.alignment, pre.effective_prior_seed())
    from statistics import NormalDist

    ref = _alignment_ranking(C, pre.alignment, REFERENCE_PRIOR_SEED)
    inv = NormalDist().inv_cdf
    s_ref = np.empty(C)
    s_ref[ref] = [inv((C - r - 0.5) / C) for r in range(C)]
    rho = float(pre.prior_agreement)
    e = np.random.default_rng([pre.effective_prior_seed(), 0xC0B1A]).standard_normal(C)
    latent = rho * s_ref + math.sqrt(max(0.0, 1.0 - rho * rho)) * e
    return np.argsort(-latent, kind="stable")


def pretrain_prior(world: ToyWorldConfig, pre: ToyPretrainConfig) -> np.ndarray:
    """The pre-training label prior [C], indexed by downstream class (max/min = imbalance_ratio)."""
    C = world.num_classes
    by_rank = pre.imbalance_ratio ** (-np.arange(C) / (C - 1))
    prior = np.empty(C)
    prior[rank_to_class(C, pre)] = by_rank / by_rank.sum()
    return prior


def corpus_counts(prior: np.ndarray, corpus_size: int) -> np.ndarray:
    """Images per class summing to ``corpus_size`` (largest remainder), at least one per class."""
    raw = prior * corpus_size
    counts = np.maximum(np.floor(raw).astype(np.int64), 1)
    short = corpus_size - counts.sum()
    if short > 0:
        counts[np.argsort(-(raw - np.floor(raw)), kind="stable")[:short]] += 1
    return counts


def pretrain_corpus(world_cfg: ToyWorldConfig, pre: ToyPretrainConfig) -> tuple[torch.Tensor, np.ndarray]:
    """(uint8 images [N, 3, H, W], labels [N]) of the pre-training corpus, seen through ``pre.view``."""
    world = make_world(world_cfg)
    counts = corpus_counts(pretrain_prior(world_cfg, pre), pre.corpus_size)
    labels = np.repeat(np.arange(world_cfg.num_classes), counts)
    instance = np.concatenate([np.arange(n) for n in counts])
    split = f"pretrain{pre.seed}"
    return world.render(labels, split, instance_ids(labels, instance), world.view_mask(pre.view)), labels


def build_vit(world: ToyWorldConfig, pre: ToyPretrainConfig) -> VisionTransformer:
    """The (untrained) timm ViT of a toy model."""
    if world.image_size % pre.patch_size:
        raise ValueError(f"pretrain.patch_size={pre.patch_size} does not divide world.image_size="
                         f"{world.image_size}; pick a divisor such as 4 or 8")
    if pre.width % pre.heads:
        raise ValueError(f"pretrain.width={pre.width} is not a multiple of pretrain.heads={pre.heads}")
    return VisionTransformer(img_size=world.image_size, patch_size=pre.patch_size, in_chans=3,
                             num_classes=world.num_classes, embed_dim=pre.width, depth=pre.depth,
                             num_heads=pre.heads, mlp_ratio=pre.mlp_ratio)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> the float input a toy model expects (MEAN / STD per channel)."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Outputs of a toy model (or its encoder) on uint8 images, normalised here; eval mode, batched."""
    model.eval()
    return torch.cat([model(normalize(images[i:i + batch_size])) for i in range(0, len(images), batch_size)])


def train_model(world: ToyWorldConfig, pre: ToyPretrainConfig) -> tuple[VisionTransformer, dict]:
    """Pre-train a toy model (AdamW, warm-up + cosine, on CPU for bit-stable results) -> (model, meta)."""
    start = time.perf_counter()
    x, y = pretrain_corpus(world, pre)
    render_s = time.perf_counter() - start
    torch.manual_seed(pre.seed)
    model = build_vit(world, pre)
    opt = torch.optim.AdamW(model.parameters(), lr=pre.lr, weight_decay=0.05)
    steps_per_epoch = math.ceil(len(y) / BATCH_SIZE)
    total = pre.epochs * steps_per_epoch
    warmup = max(1, int(WARMUP_FRACTION * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))))
    gen = torch.Generator().manual_seed(pre.seed)
    yt = torch.from_numpy(y)
    model.train()
    loss = torch.zeros(())
    for _ in range(pre.epochs):
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), BATCH_SIZE):
            idx = perm[i:i + BATCH_SIZE]
            loss = F.cross_entropy(model(normalize(x[idx])), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    train_s = time.perf_counter() - start
    val_acc = zero_shot_accuracy(model, world)
    prior = pretrain_prior(world, pre)
    meta = {"zoo_version": ZOO_VERSION, "world": world.model_dump(), "pretrain": pre.model_dump(),
            "true_prior": prior.tolist(), "corpus_counts": corpus_counts(prior, pre.corpus_size).tolist(),
            "train_seconds": round(train_s, 3), "render_seconds": round(render_s, 3),
            "torch_threads": torch.get_num_threads(), "final_train_loss": loss.item(),
            "zero_shot_val_acc": val_acc, "zero_shot_val_per_class": ZERO_SHOT_VAL_PER_CLASS,
            "trained_by_pid": os.getpid(), "trained_at": time.time()}
    return model, meta


def zero_shot_accuracy(model: torch.nn.Module, world: ToyWorldConfig) -> float:
    """Top-1 accuracy of the pre-training head on balanced held-out images with every part visible
    (what downstream images look like), from a split no data set uses."""
    labels, instance = balanced_labels(world.num_classes, ZERO_SHOT_VAL_PER_CLASS)
    images = make_world(world).render(labels, "pretrain-val", instance_ids(labels, instance))
    pred = predict(model, images).argmax(1).numpy()
    return float((pred == labels).mean())


def zoo_key(world: ToyWorldConfig, pre: ToyPretrainConfig) -> str:
    """sha256 of everything that determines a toy model's weights."""
    # an unset prior_agreement is left out so that models from before the field keep their key
    pretrain = pre.model_dump(exclude={"prior_agreement"} if pre.prior_agreement is None else None)
    blob = json.dumps({"world": world.model_dump(exclude=_DOWNSTREAM_ONLY), "pretrain": pretrain,
                       "code": ZOO_VERSION}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class ZooEntry:
    """A loaded toy model: ``model`` keeps its pre-training head; ``trained`` says whether this call trained it."""

    key: str
    path: Path
    model: VisionTransformer
    meta: dict
    trained: bool


def load_or_train(world: ToyWorldConfig, pre: ToyPretrainConfig, zoo_dir: str | os.PathLike) -> ZooEntry:
    """The zoo's model for (world, pre), training and storing it first when missing."""
    zoo = Path(zoo_dir)
    zoo.mkdir(parents=True, exist_ok=True)
    key = zoo_key(world, pre)
    path = zoo / key
    trained = False
    if not (path / "meta.json").is_file():
        with FileLock(str(zoo / f"{key}.lock")):
            if not (path / "meta.json").is_file():  # another process may have finished meanwhile
                log.info("pre-training toy model %s (%s)", key[:12], pre)
                model, meta = train_model(world, pre)
                _write_entry(path, model, meta)
                trained = True
    model = build_vit(world, pre)
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    model.eval()
    meta = json.loads((path / "meta.json").read_text())
    return ZooEntry(key, path, model, meta, trained)


def _write_entry(path: Path, model: torch.nn.Module, meta: dict) -> None:
    """Write model + meta to a temporary sibling directory, then rename it into place (atomic)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if path.exists():  # a stale, incomplete directory (no meta.json) from a killed writer
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
