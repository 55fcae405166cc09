"""The contract between a trial, tracking (``platform.tracking``) and the dashboards.

One module names everything that crosses those seams, so that a writer and its readers cannot
drift apart: ``trainables`` is the lowest layer, so ``platform`` and ``dashboards`` both import it.

- **The trial envelope.** A resolved trial config is a ``TrialConfig`` dict plus one top-level
  key, ``META_KEY``, holding the trial's place in the study (:class:`Envelope`: cell, stage,
  replicate group, Optuna trial number, seed). The trainable strips it before validating. The
  config Tune carries is compact (:func:`compact_config`: the envelope, a base-config key and the
  trial's own values); :func:`resolve_config` is the one place that makes it whole again.
- **The trial's results.** Under the platform a report reaches Tune as :func:`tune_result`: the
  objective and ``TUNE_RESULT_KEYS`` as keys, every other metric packed in ``RESULT_FIELD``;
  tracking and the driver's records read :func:`full_result`, which unpacks it.
- **MLflow names.** Tag names (:class:`Tag`), run levels (:class:`Level`), artifact folders, the
  prefix of grid values on the study run.
- **What each run carries.**

  ========  =====================================================================================
  study     tags level/study/spec_hash/storage/git_commit; params: the resolved spec flattened,
            except the paths a grid axis sweeps, which appear as ``grid.<path>`` = the axis'
            values; artifacts ``spec/study.yaml`` (resolved spec) and ``summary/cells.csv``
            (one row per cell: grid values, selected trial, headline metrics)
  cell      tags level/cell/study_run/kind/label and, once selected, ``ltbias.selected_trial``
            (Tune trial id) and ``ltbias.selected_run`` (its MLflow run id); params: the cell's
            grid values by study path; metrics: the selected configuration's ``HEADLINE_METRICS``
            and ``n_trials``
  trial     tags level/cell/study_run/trial_id/stage/group (+ seed, optuna_trial when set);
            params: :func:`trial_params` of the trial config (only what its method reads);
            metrics per report at step = epoch; artifacts: the trainable's files, one level deep
  ========  =====================================================================================
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

META_KEY = "ltbias"
"""Top-level trial-config key carrying the trial's :class:`Envelope`; never part of TrialConfig."""

STAGE1_CELL = "stage1"
"""Cell id of the plan's prerequisite stage-1 trials (not a grid cell)."""


@dataclass(frozen=True)
class Envelope:
    """A trial's place in the study.

    ``group`` numbers the configurations of a cell: the replicates (seeds) of one configuration share
    it, and selection compares groups by their mean objective. ``optuna_trial`` is the Optuna trial
    number (None without a search), ``seed`` the replicate's seed and ``replicate`` its label when
    replicates vary more than the fine-tuning seed (both None when the trial evaluates every
    replicate itself, as post-hoc and ensemble trials do).
    """

    cell: str
    stage: int
    group: int = 0
    optuna_trial: int | None = None
    seed: int | None = None
    replicate: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored under ``META_KEY``."""
        return asdict(self)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///...`` tracking URI, or None for any other URI (one rule
    for the driver, which writes the store, and the dashboards, which read it)."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    return Path(uri[len(prefix):]).expanduser()


def trial_meta(config: Mapping) -> dict:
    """The envelope block of a Tune trial config ({} for a config the searcher did not make)."""
    meta = config.get(META_KEY) if isinstance(config, Mapping) else None
    return dict(meta) if isinstance(meta, Mapping) else {}


def strip_meta(config: Mapping) -> dict:
    """A copy of a Tune trial config without the envelope: a plain TrialConfig dict."""
    return {k: v for k, v in config.items() if k != META_KEY}


def with_envelope(config: dict, envelope: Envelope) -> dict:
    """``config`` with its envelope set (in place; returned for chaining)."""
    config[META_KEY] = envelope.to_dict()
    return config


BASE_FIELD, OVERRIDES_FIELD = "base", "overrides"
"""Envelope fields of a compact trial config: the key of its shared base config and its own values."""


SHARED_EXCEPT = "runtime"
"""The section of a base config that is not shared: where a trial reads and writes (absolute paths
under the study's storage) travels with each trial, so a resume from a moved storage folder or
another working directory finds its bases by the same keys (and two bases that differ only there
never share a key)."""


def config_key(config: Mapping) -> str:
    """The content key of a base config, ``runtime`` left out (the same config gives the same key
    in every process and in every storage location)."""
    shared = {k: v for k, v in config.items() if k != SHARED_EXCEPT}
    text = json.dumps(shared, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _set_path(config: dict, path: str, value: Any) -> None:
    """``config[a][b][c] = value`` for ``path='a.b.c'`` (list elements by index), as ``flatten``
    names them; missing dict levels are created. Raises KeyError/IndexError/TypeError on a path
    the config cannot hold."""
    parts = path.split(".")
    node: Any = config
    for key in parts[:-1]:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    if isinstance(node, list):
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def compact_config(config: Mapping, base: Mapping) -> dict:
    """The trial config Tune carries: only the envelope, extended with the key of the shared
    ``base`` config and the trial's own values (searched values, replicate seeds) by ``flatten``
    path. Its size does not grow with the base (pool members, grid sections): the trainable and
    the driver hand the base configs once (``resolve_config``). A config whose difference from
    ``base`` paths cannot express is returned whole."""
    body = strip_meta(config)
    flat_base = flatten({k: v for k, v in base.items() if k != SHARED_EXCEPT})  # runtime: always the trial's
    overrides = {k: v for k, v in flatten(body).items()
                 if k not in flat_base or not _same(flat_base[k], v)}
    key = config_key(base)
    out = {META_KEY: {**trial_meta(config), BASE_FIELD: key, OVERRIDES_FIELD: overrides}}
    try:
        if _same(resolve_config(out, {key: base}), config):
            return out
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        pass
    return dict(config)


def resolve_config(config: Mapping, bases: Mapping[str, Mapping]) -> dict:
    """The full trial config (TrialConfig dict plus the envelope) of a Tune trial config: a compact
    one (``compact_config``) is its base with its own values set; any other is returned as is.
    The one place where a trial config is resolved: the trainable, tracking and the records."""
    meta = trial_meta(config)
    if BASE_FIELD not in meta:
        return dict(config)
    key, overrides = meta.pop(BASE_FIELD), meta.pop(OVERRIDES_FIELD, None) or {}
    if key not in bases:
        raise ValueError(f"trial config refers to base config {key}, which this study's plan does "
                         "not hold: the resolved study changed since the study started (its file, "
                         "or the code resolving the same file differently: a new default, fields "
                         "moved); resume it with the study file it started with and that code, "
                         "or start it afresh under another name")
    out = copy.deepcopy(dict(bases[key]))
    for path, value in overrides.items():
        _set_path(out, path, copy.deepcopy(value))
    out[META_KEY] = meta
    return out


#: The one field of a Tune result that carries the rest of a report's metrics: a JSON object
#: text (``tune_result``). Tune keeps per-key statistics (``metric_analysis``, ``metric_n_steps``)
#: of every numeric key of every trial in its experiment state, which it rewrites whole at each
#: snapshot; it skips a str value (``Trial.update_last_result`` analyses only ``Number`` values).
RESULT_FIELD = "ltbias/metrics"

#: The metrics a report gives Tune as its own keys, besides the study's objective (which the
#: searcher, the scheduler and Tune's metric check read): ``epoch`` (the progress line, the MLflow
#: step, the fault tests' reading of result.json) and ``test/acc`` (only a trial's final report
#: has it: how the fault tests and ``benchmarks.faults`` tell a finished trial from Tune's
#: per-trial result.json). Everything else travels in ``RESULT_FIELD``, so a trial's entry in
#: Tune's state does not grow with the number of metrics (pool members, groups, replicates).
TUNE_RESULT_KEYS = ("epoch", "test/acc")


def tune_result(metrics: Mapping[str, Any], objective: str) -> dict[str, Any]:
    """The result a trial reports to Tune: ``objective`` and ``TUNE_RESULT_KEYS`` as they are,
    every other metric in ``RESULT_FIELD`` (absent when there is none); ``full_result`` undoes it."""
    keep = {objective, *TUNE_RESULT_KEYS}
    out = {k: v for k, v in metrics.items() if k in keep}
    rest = {k: v for k, v in metrics.items() if k not in keep}
    if rest:
        out[RESULT_FIELD] = json.dumps(rest, separators=(",", ":"), default=_json_scalar)
    return out


_OBJECTIVE: contextvars.ContextVar[str | None] = contextvars.ContextVar("ltbias_objective", default=None)


@contextlib.contextmanager
def reporting_objective(objective: str | None) -> Iterator[None]:
    """Within it, a trial reporting through ``trainables.trainable.tune_trainable`` sends Tune
    ``tune_result(metrics, objective)`` (the driver's trial wrapper sets it: the platform's
    readers expand ``full_result``); outside it, every metric as its own key (Tune used directly)."""
    token = _OBJECTIVE.set(objective)
    try:
        yield
    finally:
        _OBJECTIVE.reset(token)


def report_objective() -> str | None:
    """The objective ``reporting_objective`` set (None outside it)."""
    return _OBJECTIVE.get()


def _json_scalar(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else str(value)  # numpy scalars; else as text


def full_result(result: Mapping[str, Any]) -> dict[str, Any]:
    """A Tune result with the metrics of its ``RESULT_FIELD`` as keys again (the field dropped);
    any other result is returned as a copy. What tracking and the driver's records read."""
    out = dict(result)
    packed = out.pop(RESULT_FIELD, None)
    if isinstance(packed, str):
        for key, value in json.loads(packed).items():
            out.setdefault(key, value)
    return out


class Level:
    """Values of ``Tag.LEVEL``: the three nested run levels."""

    STUDY = "study"
    CELL = "cell"
    TRIAL = "trial"


class Tag:
    """MLflow tag names written by tracking and read by the dashboards."""

    LEVEL = "ltbias.level"
    STUDY = "ltbias.study"
    STUDY_RUN = "ltbias.study_run"
    SPEC_HASH = "ltbias.spec_hash"
    STORAGE = "ltbias.storage"
    GIT_COMMIT = "ltbias.git_commit"
    CELL = "ltbias.cell"
    KIND = "ltbias.kind"
    LABEL = "ltbias.label"
    SELECTED_TRIAL = "ltbias.selected_trial"
    SELECTED_RUN = "ltbias.selected_run"
    TRIAL_ID = "ltbias.trial_id"
    STAGE = "ltbias.stage"
    GROUP = "ltbias.group"
    SEED = "ltbias.seed"
    REPLICATE = "ltbias.replicate"
    #: study run: the execution id that names its Optuna studies <study>/<execution>/<cell>
    EXECUTION = "ltbias.execution"
    OPTUNA_TRIAL = "ltbias.optuna_trial"
    LAST_STEP = "ltbias.last_step"
    ERROR = "ltbias.error"
    RETRIES = "ltbias.retries"
    LAST_ERROR = "ltbias.last_error"
    PARENT = "mlflow.parentRunId"
    #: MLflow's own experiment tag choosing the experiment's default page (runs, not traces).
    EXPERIMENT_KIND = "mlflow.experimentKind"


#: ``Tag.EXPERIMENT_KIND`` value for training runs: the experiment opens on its runs table.
EXPERIMENT_KIND_TRAINING = "custom_model_development"

#: Query of our links into the MLflow UI (3.x): its machine-learning view, whose experiment page is
#: the runs table (the UI's default workflow, GenAI, opens experiments on Traces).
UI_QUERY = "workflowType=machine_learning"

#: Study-run param prefix of the grid axes: ``grid.<study path>`` = the axis' values.
GRID_PARAM_PREFIX = "grid."
SPEC_ARTIFACT_DIR, SPEC_FILE = "spec", "study.yaml"
SUMMARY_ARTIFACT_DIR, SUMMARY_FILE = "summary", "cells.csv"
#: Folder of a trial checkpoint whose files tracking logs (at the run's artifact root).
TRIAL_ARTIFACT_DIR = "artifacts"

#: The metrics a cell run carries for its selected configuration (those that exist).
HEADLINE_METRICS = ("val/acc", "test/acc", "test/bal_acc", "test/worst_class_acc",
                    "test/d_few", "test/p_few")
#: Significant digits of metric values wherever people read them: the metrics MLflow shows
#: (``rounded``), tables, run names, the summary.
DISPLAY_DIGITS = 4

#: Trial-config sections that only ensemble methods (backdoor) read.
ENSEMBLE_SECTIONS = ("pool", "backdoor")


def rounded(value: float) -> float:
    """A metric value as tracking logs it to MLflow and as selection compares it: ``DISPLAY_DIGITS``
    significant digits, whole-number digits never dropped (``0.1833333 -> 0.1833``,
    ``0.000123456 -> 0.0001235``, ``12345.6 -> 12346.0``); 0, inf and nan unchanged.

    Idempotent (``rounded(rounded(x)) == rounded(x)``), so a value read back from MLflow and the
    same value fresh from Tune give one key: the driver (``platform.execute``, from Tune's results)
    and the report (``dashboards.summary``, from what tracking logged) select on the same numbers
    (``trainables.selection.select_group``). This is for the logged display and the selection key
    only: Tune, Optuna and the schedulers see full precision, and the statistics (paired
    differences and their intervals in the trainable, mean and s.d. in ``trainables.stats`` for the
    driver's rows) are computed from full-precision values. The report, which reads MLflow, shows
    mean and s.d. of the logged values: they differ from the driver's by less than half a unit of
    the 4th significant digit, far below the precision the report prints.
    """
    if value == 0 or not math.isfinite(value):
        return value
    if abs(value) >= 10 ** (DISPLAY_DIGITS - 1):
        return float(round(value))
    return float(f"{value:.{DISPLAY_DIGITS}g}")


def display(value: Any, digits: int = DISPLAY_DIGITS) -> str:
    """A value as people read it: floats rounded to ``digits`` significant digits, ``-`` for None."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(display(v, digits) for v in value) + "]"
    return str(value)


def grid_run_name(cell_id: str, values: Mapping[str, Any]) -> str:
    """A cell's run name: its id and every grid value, ``c03 method=la imbalance_ratio=100``.

    Each axis is named by its last path part, or by the part before a final ``name``
    (``method.name`` -> ``method``); the full path is the cell's param of the same value.
    """
    return " ".join([cell_id, *(f"{axis_label(path)}={display(v)}" for path, v in values.items())])


def axis_label(path: str) -> str:
    """The short name of a study path in run names: ``method.name`` -> ``method``,
    ``dataset.imbalance_ratio`` -> ``imbalance_ratio``."""
    parts = path.split(".")
    return parts[-2] if len(parts) > 1 and parts[-1] == "name" else parts[-1]


def trial_run_name(envelope: Mapping[str, Any], trial_id: str, config: Mapping[str, Any] | None = None
                   ) -> str:
    """A trial's run name from its envelope, never None: ``c03 g2 seed1 <trial id>`` (no seed part
    when the trial evaluates every seed itself). A stage-1 prerequisite names what it fine-tunes:
    ``stage1 la toy[all,ir10,shuffled,s0] seed0 <trial id>``."""
    cell = str(envelope.get("cell") or STAGE1_CELL)
    parts = [cell]
    if cell == STAGE1_CELL and config is not None:
        from trainables.config import BackboneConfig
        parts.append(str((config.get("method") or {}).get("name")))
        parts.append(BackboneConfig.model_validate(config.get("backbone") or {}).display())
    else:
        parts.append(f"g{envelope.get('group') or 0}")
    if envelope.get("replicate") is not None:
        parts.append(str(envelope["replicate"]))
    elif envelope.get("seed") is not None:
        parts.append(f"seed{envelope['seed']}")
    return " ".join([*parts, trial_id])


def trial_tags(envelope: Mapping[str, Any]) -> dict[str, str]:
    """The envelope as trial-run tags (None fields left out)."""
    names = {"cell": Tag.CELL, "stage": Tag.STAGE, "group": Tag.GROUP, "seed": Tag.SEED,
             "replicate": Tag.REPLICATE, "optuna_trial": Tag.OPTUNA_TRIAL}
    return {tag: str(envelope[k]) for k, tag in names.items() if envelope.get(k) is not None}


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}``; lists of dicts flatten by index, other lists stay values."""
    out: dict[str, Any] = {}
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
    elif isinstance(tree, list) and tree and all(isinstance(v, Mapping) for v in tree):
        for i, value in enumerate(tree):
            out.update(flatten(value, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = tree
    return out


def method_fields(method: Mapping[str, Any], prefix: str = "method") -> dict[str, Any]:
    """The ``method`` block as params: its name plus only the fields its registered method reads."""
    from trainables.methods import METHODS
    name = method.get("name")
    reads: tuple[str, ...] = tuple(k for k in method if k != "name")
    if name in METHODS:  # its config's fields (a post-hoc method's base runs with its own defaults)
        reads = METHODS.get(name).params
    return {f"{prefix}.name": name, **{f"{prefix}.{k}": method[k] for k in reads if k in method}}


def trial_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """The params a trial run logs: the flattened trial config, limited to what the trial reads.

    The ``method`` block keeps only the fields its method reads (``Method.params``); ``pool`` and
    ``backdoor`` appear only for ensemble methods, whose stratum method is limited the same way.
    """
    from trainables.methods import METHODS
    config = strip_meta(config)
    method = config.get("method") or {}
    name = method.get("name")
    ensemble = name in METHODS and METHODS.get(name).kind == "ensemble"
    out: dict[str, Any] = {}
    for section, value in config.items():
        if section == "method":
            out.update(method_fields(method))
        elif section in ENSEMBLE_SECTIONS:
            if not ensemble:
                continue
            if section == "backdoor" and isinstance(value, Mapping):
                value = dict(value)
                stratum = value.pop("stratum_method", None) or {}
                out.update(flatten(value, "backdoor."))
                out.update(method_fields(stratum, "backdoor.stratum_method"))
            else:
                out.update(flatten(value, f"{section}."))
        else:
            out.update(flatten(value, f"{section}."))
    return out


__all__ = ["BASE_FIELD", "OVERRIDES_FIELD", "compact_config", "config_key", "resolve_config",
           "RESULT_FIELD", "TUNE_RESULT_KEYS", "full_result", "report_objective", "reporting_objective",
           "tune_result",
           "DISPLAY_DIGITS", "ENSEMBLE_SECTIONS", "EXPERIMENT_KIND_TRAINING", "Envelope",
           "GRID_PARAM_PREFIX", "HEADLINE_METRICS", "Level", "META_KEY", "STAGE1_CELL",
           "SPEC_ARTIFACT_DIR", "SPEC_FILE", "SUMMARY_ARTIFACT_DIR", "SUMMARY_FILE", "Tag",
           "TRIAL_ARTIFACT_DIR", "UI_QUERY", "axis_label", "sqlite_path", "display", "rounded", "flatten", "grid_run_name", "method_fields",
           "strip_meta", "trial_meta", "trial_params", "trial_run_name", "trial_tags",
           "with_envelope"]
