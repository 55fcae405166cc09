"""Exact resume: the stage-1 checkpoint and the random-number state (docs/ARCHITECTURE.md, section 2).

``save_checkpoint`` writes the trainable weights (and every buffer), optimizer, scheduler, grad
scaler, history and RNG state into ``state.pt``, loadable with ``torch.load(weights_only=True)``;
``load_checkpoint`` reads it back, or returns None (start fresh, with a warning) when it is absent,
damaged or of another config. Every epoch re-seeds the global RNGs from (seed, epoch)
(``derive_seed``, ``seed_everything``); ``capture_rng`` / ``restore_rng`` carry the RNG state
across a resume.
"""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "state.pt"
CHECKPOINT_VERSION = 1


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
