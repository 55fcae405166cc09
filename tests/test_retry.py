"""platform.retry: transient store errors are retried with backoff, others raised at once."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from platform.retry import Retrying, retry, transient


def test_locked_database_errors_are_transient_and_programming_errors_are_not() -> None:
    assert transient(sqlite3.OperationalError("database is locked"))
    wrapped = RuntimeError("commit failed")
    wrapped.__cause__ = sqlite3.OperationalError("database is locked")
    assert transient(wrapped)  # e.g. Optuna's StorageInternalError around SQLAlchemy's error
    assert transient(ConnectionError("refused"))
    assert not transient(ValueError("bad param"))
    assert not transient(sqlite3.OperationalError("no such table: runs"))


def test_retry_sleeps_with_backoff_until_success() -> None:
    calls, sleeps = [], []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise sqlite3.OperationalError("database is locked")
        return "ok"

    assert retry(flaky, what="test", sleep=sleeps.append) == "ok"
    assert len(calls) == 4 and len(sleeps) == 3 and sleeps[0] < sleeps[1] < sleeps[2]


def test_retry_gives_up_at_the_deadline_and_raises_other_errors_at_once() -> None:
    def locked() -> None:
        raise sqlite3.OperationalError("database is locked")

    with pytest.raises(sqlite3.OperationalError):
        retry(locked, what="test", deadline_s=0.0, sleep=lambda s: None)
    calls = []

    def broken() -> None:
        calls.append(1)
        raise KeyError("x")

    with pytest.raises(KeyError):
        retry(broken, what="test", sleep=lambda s: None)
    assert calls == [1]


def test_a_write_waits_out_another_process_holding_the_database(tmp_path) -> None:
    db = tmp_path / "store.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE t (x INTEGER)")
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(1.5, lambda: holder.execute("COMMIT"))
    release.start()
    try:
        writer = Retrying(sqlite3.connect(db, timeout=0.1, isolation_level=None), "test store")
        writer.execute("INSERT INTO t VALUES (1)")  # retried until the lock is gone
    finally:
        release.join()
        holder.close()
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT COUNT(*) FROM t").fetchone() == (1,)
