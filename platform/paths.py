"""Default locations: everything a study writes lives under ``<repo>/outputs`` unless told otherwise.

A fresh clone runs with no server: MLflow on SQLite, Ray results, the stage-1 cache and the
backbone zoo side by side in one git-ignored folder. ``$LTBIAS_OUTPUTS`` moves that folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from trainables.contract import sqlite_path

REPO_ROOT = Path(__file__).resolve().parent.parent
OUTPUTS_ENV = "LTBIAS_OUTPUTS"


def outputs_dir() -> Path:
    """The folder default outputs go to: ``$LTBIAS_OUTPUTS`` or ``<repo>/outputs``."""
    return Path(os.environ.get(OUTPUTS_ENV) or REPO_ROOT / "outputs").expanduser().resolve()


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<outputs>/mlflow.db`` (MLflow refuses the
    plain file store)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{outputs_dir() / 'mlflow.db'}"


def default_storage() -> str:
    """``<outputs>/ray_results``: where Ray Tune keeps experiment state and checkpoints."""
    return str(outputs_dir() / "ray_results")


def is_local(location: str) -> bool:
    """True for a filesystem path or ``file://`` URI; False for s3://, gs://, http:// ..."""
    scheme = urlparse(location).scheme
    # A one-letter scheme is a Windows drive letter, not a URI.
    return scheme in ("", "file") or len(scheme) == 1


def local_path(location: str) -> Path:
    """The absolute filesystem path of a local ``location`` (a path or ``file://`` URI)."""
    if location.startswith("file://"):
        location = urlparse(location).path
    return Path(location).expanduser().resolve()


def stage1_cache_dir(storage: str) -> Path:
    """The stage-1 cache of a local ``storage``: ``<storage>/_cache``."""
    # A leading underscore cannot clash with a study (experiment) folder: study names are slugs
    # starting with a letter or digit.
    return local_path(storage) / "_cache"


def zoo_dir(storage: str) -> Path:
    """The toy backbone zoo (pre-trained toy models) of a local ``storage``: ``<storage>/_zoo``."""
    return local_path(storage) / "_zoo"


OPTUNA_JOURNAL = "optuna.journal.log"


def optuna_storage(tracking_uri: str, storage: str) -> str:
    """Optuna's storage: the journal file ``optuna.journal.log`` next to a SQLite MLflow DB, else
    under a local ``storage``, else under the outputs folder (a journal needs a local file).

    A journal file appends one line per change instead of committing a SQLite transaction per
    call (``ask`` and ``tell`` about 7x cheaper), and is just as resumable.
    """
    db = sqlite_path(tracking_uri)
    if db is not None:
        folder = db.resolve().parent
    elif is_local(storage):
        folder = local_path(storage)
    else:
        folder = outputs_dir()
    return str(folder / OPTUNA_JOURNAL)


def open_optuna_storage(location: str):
    """The Optuna storage at ``location``: an RDB URL (``sqlite:///...``, ``postgresql://...``)
    as Optuna opens it, else a journal file path (``optuna.journal.log``)."""
    if "://" in location:
        import optuna

        from platform.retry import sqlite_engine_kwargs
        kwargs = sqlite_engine_kwargs() if location.startswith("sqlite") else {}
        return optuna.storages.RDBStorage(location, engine_kwargs=kwargs)
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    return JournalStorage(JournalFileBackend(str(local_path(location))))


__all__ = ["OUTPUTS_ENV", "REPO_ROOT", "default_storage", "default_tracking_uri", "is_local",
           "local_path", "open_optuna_storage", "optuna_storage", "outputs_dir", "sqlite_path", "stage1_cache_dir",
           "zoo_dir"]
