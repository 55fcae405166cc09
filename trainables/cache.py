"""The content-addressed stage-1 cache: val/test logits of one fine-tune, keyed by what determines them.

Layout: ``<cache_dir>/stage1/<key[:2]>/<key>/`` with ``logits.parquet`` (split, index, label,
logits list<float32>; splits val, test and, for a backbone with a zero-shot classifier, zeroshot_val
and zeroshot_test, its logits before fine-tuning) and ``meta.json``. Entries are written to a temporary directory and renamed
into place, so a reader never sees half an entry; a file lock per key makes racing trials compute once.

Integrity: ``meta.json`` records the entry's key and the sha256 of every other file of the entry,
and ``meta.sha256`` the sha256 of ``meta.json``. A read checks all of them; an entry that fails
(truncated, edited, or moved under another key) is moved to ``<cache_dir>/stage1/damaged/`` with a
warning naming it, and ``get`` answers None, so the caller recomputes it under the key's lock.
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
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from filelock import FileLock

from trainables.config import TrialConfig
from trainables.methods import get_method

log = logging.getLogger(__name__)

META, META_SUM, LOGITS = "meta.json", "meta.sha256", "logits.parquet"


class DamagedEntry(ValueError):
    """A cache entry whose files do not match their recorded checksums or key."""


# Fields that never change a stage-1 result (display names, where files go).
_IGNORED_FIELDS = {"backbone": {"label"}}


@dataclass
class Stage1Result:
    """What a stage-1 fine-tune leaves behind for stage-2 methods and reports."""

    val_logits: np.ndarray   # [N_val, C] float32
    val_labels: np.ndarray   # [N_val] int64
    test_logits: np.ndarray  # [N_test, C] float32
    test_labels: np.ndarray  # [N_test] int64
    train_counts: np.ndarray
    group_counts: np.ndarray
    group_rule: str
    class_names: list[str]
    q_hat: np.ndarray | None = None
    true_prior: np.ndarray | None = None  # the backbone's known pre-training prior (toy models)
    history: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    # The backbone's zero-shot logits of the same examples (before fine-tuning) and GLA's temperature
    # T (``trainables.prior.gla_temperature``); None for a backbone without a zero-shot classifier.
    zeroshot_val_logits: np.ndarray | None = None
    zeroshot_test_logits: np.ndarray | None = None
    zeroshot_temperature: float | None = None

    def calibrated_zero_shot(self, split: str) -> np.ndarray | None:
        """The cached zero-shot logits of ``split`` ("val" or "test") divided by GLA's temperature,
        or None when the backbone has no zero-shot classifier."""
        z = getattr(self, f"zeroshot_{split}_logits")
        if z is None:
            return None
        return z / (self.zeroshot_temperature or 1.0)


def stage1_key(cfg: TrialConfig) -> str:
    """sha256 of the canonical JSON of (dataset, backbone, finetune, method, seed)."""
    payload = {name: getattr(cfg, name).model_dump(mode="json", exclude=_IGNORED_FIELDS.get(name))
               for name in ("dataset", "backbone", "finetune")}
    # Only the hyper-parameters the method reads: a post-hoc tau search must not retrain its base model.
    method = get_method(cfg.method.name)
    payload["method"] = {"name": cfg.method.name, **{p: getattr(cfg.method, p) for p in method.params}}
    payload["seed"] = cfg.seed
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class Stage1Cache:
    """Stage-1 entries under ``<cache_dir>/stage1``."""

    def __init__(self, cache_dir: str) -> None:
        self.root = os.path.join(cache_dir, "stage1")

    def path(self, key: str) -> str:
        """The entry directory of ``key``."""
        return os.path.join(self.root, key[:2], key)

    def get(self, key: str, *, repair: bool = True) -> Stage1Result | None:
        """The stored entry, or None when there is none or it is damaged. A damaged entry is moved
        aside when ``repair`` (callers hold ``lock(key)`` then, so a fresh entry is never moved)."""
        path = self.path(key)
        if not os.path.isdir(path):
            return None
        try:
            return read_entry(path, key)
        except (DamagedEntry, OSError, ValueError, KeyError, TypeError, pa.ArrowException) as exc:
            if repair:
                self.quarantine(key, exc)
            return None

    def quarantine(self, key: str, why: BaseException) -> str:
        """Move ``key``'s entry to ``damaged/`` (kept for inspection) and warn naming both."""
        src = self.path(key)
        dst = os.path.join(self.root, "damaged", f"{key}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        try:
            os.rename(src, dst)
        except OSError:
            shutil.rmtree(src, ignore_errors=True)
            dst = "(removed)"
        log.warning("stage-1 cache entry %s is damaged (%s: %s); moved to %s, recomputing it",
                    src, type(why).__name__, str(why).splitlines()[0] if str(why) else "", dst)
        return dst

    def put(self, key: str, result: Stage1Result) -> str:
        """Store ``result`` atomically; an existing entry wins (same key = same computation)."""
        final = self.path(key)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{key[:8]}-", dir=os.path.dirname(final))
        try:
            write_entry(tmp, result, key)
            try:
                os.rename(tmp, final)  # atomic; fails when another writer got there first
            except OSError:
                if not os.path.isfile(os.path.join(final, META)):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final

    def lock(self, key: str) -> FileLock:
        """The inter-process lock of ``key``'s entry (held while the entry is being computed)."""
        os.makedirs(os.path.join(self.root, key[:2]), exist_ok=True)
        return FileLock(self.path(key) + ".lock")

    def get_or_create(self, key: str, fn: Callable[[], Stage1Result]) -> Stage1Result:
        """The entry of ``key``; computed by ``fn`` under a file lock when missing (once across processes)."""
        hit = self.get(key, repair=False)
        if hit is not None:
            return hit
        with self.lock(key):
            hit = self.get(key)  # another process may have finished while we waited
            if hit is not None:
                return hit
            result = fn()
            self.put(key, result)
            return result


def file_sha256(path: str) -> str:
    """sha256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_entry(path: str, r: Stage1Result, key: str | None = None) -> None:
    """Write ``r`` as logits.parquet + meta.json (with the key and checksums) + meta.sha256."""
    os.makedirs(path, exist_ok=True)
    splits = {"val": (r.val_logits, r.val_labels), "test": (r.test_logits, r.test_labels)}
    if r.zeroshot_val_logits is not None and r.zeroshot_test_logits is not None:
        splits.update({"zeroshot_val": (r.zeroshot_val_logits, r.val_labels),
                       "zeroshot_test": (r.zeroshot_test_logits, r.test_labels)})
    pq.write_table(logits_table(splits), os.path.join(path, LOGITS))
    meta = {
        "key": key,
        "files": {LOGITS: file_sha256(os.path.join(path, LOGITS))},
        "train_counts": np.asarray(r.train_counts).tolist(),
        "group_counts": np.asarray(r.group_counts).tolist(),
        "group_rule": r.group_rule,
        "class_names": list(r.class_names),
        "q_hat": None if r.q_hat is None else np.asarray(r.q_hat, dtype=np.float64).tolist(),
        "true_prior": None if r.true_prior is None else np.asarray(r.true_prior, dtype=np.float64).tolist(),
        "history": [_json_safe(h) for h in r.history],
        "metrics": _json_safe(r.metrics),
        "config": r.config,
        "zeroshot_temperature": r.zeroshot_temperature,
    }
    with open(os.path.join(path, META), "w") as f:
        json.dump(meta, f, indent=1, allow_nan=False)
    with open(os.path.join(path, META_SUM), "w") as f:
        f.write(file_sha256(os.path.join(path, META)) + "\n")


def verify_entry(path: str, key: str | None = None) -> dict:
    """The entry's meta after checking meta.json, every file it lists, and (given) its key;
    raises DamagedEntry naming the file that does not match."""
    meta_path = os.path.join(path, META)
    for name in (META, META_SUM):
        if not os.path.isfile(os.path.join(path, name)):
            raise DamagedEntry(f"{os.path.join(path, name)} is missing")
    with open(os.path.join(path, META_SUM)) as f:
        if f.read().strip() != file_sha256(meta_path):
            raise DamagedEntry(f"{meta_path} does not match its checksum in {META_SUM}")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except ValueError as exc:
        raise DamagedEntry(f"{meta_path} is not valid JSON ({exc})") from None
    if key is not None and meta.get("key") != key:
        raise DamagedEntry(f"{meta_path} belongs to key {str(meta.get('key'))[:12]}, not {key[:12]}")
    files = meta.get("files") or {}
    if LOGITS not in files:
        raise DamagedEntry(f"{meta_path} lists no checksum of {LOGITS}")
    for name, digest in files.items():
        file = os.path.join(path, name)
        if not os.path.isfile(file) or file_sha256(file) != digest:
            raise DamagedEntry(f"{file} is missing or does not match its checksum in {META}")
    return meta


def read_entry(path: str, key: str | None = None) -> Stage1Result:
    """Read an entry directory written by ``write_entry``, verified first (``verify_entry``)."""
    meta = verify_entry(path, key)
    table = pq.read_table(os.path.join(path, LOGITS))
    arrays = {split: _split_arrays(table, split) for split in ("val", "test", "zeroshot_val", "zeroshot_test")}
    has_zeroshot = len(arrays["zeroshot_val"][1]) > 0
    return Stage1Result(
        val_logits=arrays["val"][0], val_labels=arrays["val"][1],
        test_logits=arrays["test"][0], test_labels=arrays["test"][1],
        train_counts=np.asarray(meta["train_counts"], dtype=np.int64),
        group_counts=np.asarray(meta["group_counts"], dtype=np.int64),
        group_rule=meta["group_rule"], class_names=meta["class_names"],
        q_hat=None if meta["q_hat"] is None else np.asarray(meta["q_hat"], dtype=np.float64),
        true_prior=None if meta.get("true_prior") is None else np.asarray(meta["true_prior"], dtype=np.float64),
        history=[_json_restore(h) for h in meta["history"]], metrics=_json_restore(meta["metrics"]),
        config=meta["config"],
        zeroshot_val_logits=arrays["zeroshot_val"][0] if has_zeroshot else None,
        zeroshot_test_logits=arrays["zeroshot_test"][0] if has_zeroshot else None,
        zeroshot_temperature=meta.get("zeroshot_temperature"),
    )


def logits_table(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> pa.Table:
    """Columns split, index, label, logits list<float32>, one row per example."""
    names, index, labels, values = [], [], [], []
    for split, (z, y) in splits.items():
        z = np.asarray(z, dtype=np.float32)
        names += [split] * len(y)
        index.append(np.arange(len(y), dtype=np.int64))
        labels.append(np.asarray(y, dtype=np.int64))
        values.append(z.reshape(len(y), -1))
    values_np = np.concatenate(values) if values else np.zeros((0, 0), np.float32)
    n, c = values_np.shape
    offsets = pa.array(np.arange(0, n * c + 1, max(c, 1) if n else 1, dtype=np.int32)[: n + 1])
    return pa.table({
        "split": pa.array(names, pa.string()),
        "index": pa.array(np.concatenate(index) if index else [], pa.int64()),
        "label": pa.array(np.concatenate(labels) if labels else [], pa.int64()),
        "logits": pa.ListArray.from_arrays(offsets, pa.array(values_np.reshape(-1), pa.float32())),
    })


def _split_arrays(table: pa.Table, split: str) -> tuple[np.ndarray, np.ndarray]:
    sub = table.filter(pc.equal(table["split"], split)).sort_by("index")
    labels = sub["label"].to_numpy().astype(np.int64)
    if not len(labels):  # e.g. no zeroshot_* rows: a backbone without a zero-shot classifier
        return np.zeros((0, 0), np.float32), labels
    values = sub["logits"].combine_chunks().flatten().to_numpy().astype(np.float32)
    return values.reshape(len(labels), -1), labels


def _json_safe(d: dict[str, Any]) -> dict[str, Any]:
    # JSON has no NaN; empty groups give NaN metrics, stored as null and restored as NaN.
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else
                float(v) if isinstance(v, (np.floating, float)) else
                int(v) if isinstance(v, (np.integer, int)) and not isinstance(v, bool) else v)
            for k, v in d.items()}


def _json_restore(d: dict[str, Any]) -> dict[str, Any]:
    return {k: math.nan if v is None else v for k, v in d.items()}
