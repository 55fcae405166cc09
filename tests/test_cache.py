"""The stage-1 cache: content-addressed keys, exact round trips, atomic entries, one computation per key,
and damaged entries (truncated, swapped, missing files) moved aside and recomputed."""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import time

import numpy as np
import pytest

from trainables.cache import Stage1Cache, Stage1Result, stage1_key
from trainables.config import TrialConfig


def _result(seed: int = 0) -> Stage1Result:
    rng = np.random.default_rng(seed)
    return Stage1Result(
        val_logits=rng.normal(size=(6, 3)).astype(np.float32), val_labels=np.array([0, 1, 2, 0, 1, 2]),
        test_logits=rng.normal(size=(4, 3)).astype(np.float32), test_labels=np.array([2, 1, 0, 0]),
        train_counts=np.array([50, 10, 2]), group_counts=np.array([150, 30, 2]), group_rule="reference_ir=100",
        class_names=["a", "b", "c"], q_hat=np.array([0.5, 0.3, 0.2]),
        history=[{"epoch": 1, "val/acc": 0.5, "val/d_many": math.nan}],
        metrics={"test/acc": 0.75, "test/p_few": math.nan}, config={"seed": seed})


def test_key_depends_on_what_determines_results_only():
    base = TrialConfig()
    same = TrialConfig.model_validate({"runtime": {"cache_dir": "/elsewhere", "artifacts": False},
                                       "backbone": {"label": "nice name"},
                                       "replicates": [{"finetune": 7}, {"finetune": 8}]})
    assert stage1_key(base) == stage1_key(same)
    for change in ({"seed": 1}, {"method": {"name": "ce"}}, {"finetune": {"lr": 0.02}},
                   {"dataset": {"imbalance_ratio": 10}}, {"backbone": {"pretrain": {"seed": 1}}}):
        assert stage1_key(TrialConfig.model_validate(change)) != stage1_key(base), change


def test_entry_round_trips_exactly_and_leaves_no_temporary_directory(tmp_path):
    cache = Stage1Cache(str(tmp_path))
    r = _result()
    path = cache.put("ab" * 32, r)
    assert sorted(os.listdir(path)) == ["logits.parquet", "meta.json", "meta.sha256"]
    assert os.listdir(os.path.dirname(path)) == ["ab" * 32]
    got = cache.get("ab" * 32)
    for name in ("val_logits", "val_labels", "test_logits", "test_labels", "train_counts", "group_counts", "q_hat"):
        np.testing.assert_array_equal(getattr(got, name), getattr(r, name))
    assert got.val_logits.dtype == np.float32 and got.test_labels.dtype == np.int64
    assert got.class_names == r.class_names and got.group_rule == r.group_rule
    assert math.isnan(got.history[0]["val/d_many"]) and got.metrics["test/acc"] == 0.75
    assert cache.get("cd" * 32) is None


def test_put_keeps_the_existing_entry(tmp_path):
    cache = Stage1Cache(str(tmp_path))
    cache.put("ef" * 32, _result(0))
    cache.put("ef" * 32, _result(1))
    assert cache.get("ef" * 32).config == {"seed": 0}


def _race(cache_dir: str, counter: str, out: str) -> None:
    def compute() -> Stage1Result:
        with open(counter, "a") as f:
            f.write("x")
        time.sleep(0.5)  # long enough for the other process to reach the lock
        return _result()

    r = Stage1Cache(cache_dir).get_or_create("12" * 32, compute)
    np.save(out, r.test_logits)


def test_racing_processes_compute_an_entry_once(tmp_path):
    ctx = mp.get_context("spawn")
    counter = str(tmp_path / "count")
    procs = [ctx.Process(target=_race, args=(str(tmp_path / "cache"), counter, str(tmp_path / f"out{i}.npy")))
             for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    assert open(counter).read() == "x"
    np.testing.assert_array_equal(np.load(tmp_path / "out0.npy"), np.load(tmp_path / "out1.npy"))


# --------------------------------------------------------------------------- integrity

def _truncate(path: str) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) // 2)


def _damage_cases() -> list[tuple[str, object]]:
    def truncate_logits(entry: str, other: str) -> None:
        _truncate(os.path.join(entry, "logits.parquet"))

    def truncate_meta(entry: str, other: str) -> None:
        _truncate(os.path.join(entry, "meta.json"))

    def swap_logits(entry: str, other: str) -> None:  # a valid Parquet file of another entry
        a, b = os.path.join(entry, "logits.parquet"), os.path.join(other, "logits.parquet")
        tmp = a + ".swap"
        os.rename(a, tmp)
        os.rename(b, a)
        os.rename(tmp, b)

    def swap_entries(entry: str, other: str) -> None:  # two whole valid entries swapped
        tmp = entry + ".swap"
        os.rename(entry, tmp)
        os.rename(other, entry)
        os.rename(tmp, other)

    def delete_logits(entry: str, other: str) -> None:
        os.remove(os.path.join(entry, "logits.parquet"))

    return [("truncated logits.parquet", truncate_logits), ("truncated meta.json", truncate_meta),
            ("logits of another entry", swap_logits), ("two entries swapped", swap_entries),
            ("missing logits.parquet", delete_logits)]


@pytest.mark.parametrize("what,damage", _damage_cases(), ids=[c[0] for c in _damage_cases()])
def test_a_damaged_entry_is_moved_aside_with_a_warning_and_recomputed(tmp_path, caplog, what, damage):
    cache = Stage1Cache(str(tmp_path))
    key, other = "ab" * 32, "cd" * 32
    cache.put(key, _result(0))
    cache.put(other, _result(1))
    damage(cache.path(key), cache.path(other))
    calls = []

    def compute() -> Stage1Result:
        calls.append(1)
        return _result(0)

    with caplog.at_level("WARNING", logger="trainables.cache"):
        got = cache.get_or_create(key, compute)
    assert calls == [1], f"{what}: the damaged entry was not recomputed"
    np.testing.assert_array_equal(got.val_logits, _result(0).val_logits)
    assert cache.get(key).config == {"seed": 0}  # the fresh entry is in place and verifies
    damaged = os.listdir(os.path.join(cache.root, "damaged"))
    assert len(damaged) == 1 and damaged[0].startswith(key)
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert cache.path(key) in warning and "damaged" in warning


def test_an_intact_entry_is_read_without_recomputing(tmp_path):
    cache = Stage1Cache(str(tmp_path))
    cache.put("ef" * 32, _result(3))
    assert cache.get_or_create("ef" * 32, lambda: pytest.fail("recomputed an intact entry")).config == {"seed": 3}
    assert not os.path.exists(os.path.join(cache.root, "damaged"))
