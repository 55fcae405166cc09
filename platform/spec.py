"""The study spec: a YAML file validated by pydantic, composed of the trial-config models.

``load_study(path, overrides)`` reads a study file (``yaml.safe_load`` semantics, keeping each
node's line), applies ``--set path=value`` overrides, validates the spec, every grid cell's trial
config and the search space, and raises ``SpecError`` naming file, line, field, value and fix.

Two path namespaces (dotted, ``*`` maps over a list, an integer indexes one):
- *study paths* address the study document: ``dataset.imbalance_ratio``, ``method.name``,
  ``backbones.*.pretrain.imbalance_ratio``, ``backbones.0.name``, ``backbone_index``. Grid axes,
  ``search.where`` and ``--set`` use them.
- *trial paths* address ``trainables.config.TrialConfig``: ``finetune.lr``, ``backdoor.strata``,
  ``backbone.pretrain.seed``, ``pool.0.name``. ``search.space`` uses them (the searcher sets
  sampled values on a cell's trial config).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal, Sequence

import yaml
from pydantic import (BaseModel, ConfigDict, Field, PlainValidator, PrivateAttr, ValidationError,
                      WithJsonSchema, field_validator, model_validator)

from platform import paths
from platform.errors import Issue, SpecError, did_you_mean, show_value
from platform.space import DISTRIBUTIONS, check_distribution, condition, grid_size, representative_values
from platform.space import JSON_SCHEMA as SPACE_SCHEMA
from trainables.config import (BackboneConfig, BackdoorConfig, DatasetConfig, FinetuneConfig,
                               MethodConfig, Replicate, RuntimeConfig, SeedAxes, TrialConfig, seed_axes)

Segment = str | int
PathTuple = tuple[Segment, ...]

# --------------------------------------------------------------------------------------------
# Search distributions: the models and checks live in platform.space; the plan carries plain dicts.
# --------------------------------------------------------------------------------------------

Distribution = Annotated[dict[str, Any], PlainValidator(check_distribution), WithJsonSchema(SPACE_SCHEMA)]


# --------------------------------------------------------------------------------------------
# The models.
# --------------------------------------------------------------------------------------------

class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchSpec(_Spec):
    """Hyper-parameter search inside each grid cell."""

    algorithm: Literal["grid", "random", "optuna"] = Field(
        "optuna", description="grid: every combination of categorical choices; random; optuna (TPE)")
    num_samples: int | None = Field(
        None, ge=1, description="configurations per cell; default 10 (random, optuna) or the size "
                                "of the space (grid)")
    metric: str = Field("val/acc", description="the metric that selects a configuration "
                                               "(validation only: never a test/* metric)")
    mode: Literal["max", "min"] = "max"
    seed: int = Field(0, description="seed of the sampler")
    space: dict[str, Distribution] = Field(
        default_factory=dict, description="trial path -> distribution, e.g. finetune.lr: {logfloat: [0.001, 0.1]}")
    where: dict[str, list[Any]] | None = Field(
        None, description="study path -> values: only matching cells are searched (e.g. "
                          "{method.name: [backdoor]}); the others run once per seed")

    @field_validator("metric")
    @classmethod
    def _no_test_selection(cls, v: str) -> str:
        if any(part.startswith("test") for part in v.split("/")):  # test/acc, zeroshot/test_acc, ...
            raise ValueError("selecting on a test metric leaks the test split; use a val/ metric")
        return v


class FifoSpec(_Spec):
    """First in, first out: every trial runs to its end."""


class AshaSpec(_Spec):
    """Asynchronous successive halving (early stopping on ``search.metric``; epoch = time step)."""

    grace_period: int = Field(1, ge=1, description="epochs every trial runs before it may be stopped")
    reduction_factor: float = Field(2.0, gt=1, description="keep 1/reduction_factor at each rung")
    max_t: int | None = Field(None, ge=1, description="the last epoch; default: the study's "
                                                      "largest finetune.epochs")


class SchedulerSpec(_Spec):
    """Exactly one of ``fifo`` or ``asha`` (the string ``fifo`` or ``asha`` is a shorthand)."""

    fifo: FifoSpec | None = None
    asha: AshaSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str) and data in ("fifo", "asha"):
            return {data: {}}
        if isinstance(data, dict):
            # `fifo:` with no value means fifo with its defaults; `asha: null` beside a chosen
            # `fifo: {}` (a dumped spec) means not asha.
            chosen = {k: v for k, v in data.items() if v is not None}
            return chosen or {k: {} for k in data}
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> "SchedulerSpec":
        if self.fifo is None and self.asha is None:
            self.fifo = FifoSpec()
        if self.fifo is not None and self.asha is not None:
            raise ValueError("give exactly one scheduler: {fifo: {}} or {asha: {...}}")
        return self

    @property
    def kind(self) -> str:
        """'fifo' or 'asha'."""
        return "asha" if self.asha is not None else "fifo"


class Published(_Spec):
    """A published number the report shows beside ours (LIFT's, the paper's), for the cells it
    belongs to: those whose method is ``method`` and whose grid values match ``where``."""

    source: str = Field(description="who published it and where, e.g. 'LIFT (ICML 2024), Table 1'")
    method: str = Field(description="our method it compares with (a cell's method.name)")
    where: dict[str, Any] = Field(default_factory=dict, description="grid axis -> value of the cells "
                                                                    "it belongs to, e.g. {backbone_index: 0}")
    metric: str = Field("test/acc", description="the metric (a fraction: 0.783 is 78.3 %)")
    value: float | None = Field(None, description="the published value of metric")
    min_gain: float | None = Field(None, description="instead of value: the claimed gain of method over "
                                                     "the best single-model cell with the same where")
    approximate: bool = Field(False, description="the number is read off a figure or quoted as 'about'")

    @model_validator(mode="after")
    def _one_number(self) -> "Published":
        if (self.value is None) == (self.min_gain is None):
            raise ValueError("give exactly one of value (a published number) and min_gain (a claimed "
                             "gain over the best single model)")
        return self


class Resources(_Spec):
    """What one trial holds (fractions share a device)."""

    cpu: float = Field(1.0, gt=0, description="CPUs per trial (torch threads follow it)")
    gpu: float = Field(0.0, ge=0, description="GPUs per trial; a fraction such as 0.25 shares one")


class TrialSections(_Spec):
    """The part of a study that defines what a trial computes (what grid axes may change)."""

    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    backbones: list[BackboneConfig] = Field(
        default_factory=lambda: [BackboneConfig()], min_length=1,
        description="the backbone pool (backdoor strata); single-model methods use backbone_index")
    backbone_index: int = Field(0, ge=0, description="the pool member single-model methods fine-tune")
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    backdoor: BackdoorConfig = Field(default_factory=BackdoorConfig)


GRID_ROOTS = tuple(TrialSections.model_fields)
SEARCH_ROOTS = ("dataset", "backbone", "pool", "finetune", "method", "backdoor")
_LOCATION_FIELDS = frozenset({"storage", "tracking_uri", "max_concurrent"})


class Study(TrialSections):
    """A study: a grid of cells (full cross product), a search inside each, seeds, resources."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$",
                      description="slug: the MLflow experiment and Ray experiment name")
    description: str = ""
    runtime: RuntimeConfig = Field(
        default_factory=RuntimeConfig,
        description="where trials read and write; cache_dir and zoo_dir default under storage")
    grid: dict[str, list[Any] | dict[str, dict[str, Any]]] = Field(
        default_factory=dict, description="study path -> non-empty list of values, or a named bundle "
                                          "axis name -> {label: {study path: value, ...}} (one axis "
                                          "setting several paths together); the cells are the full "
                                          "cross product of the axes (file order)")
    search: SearchSpec = Field(default_factory=SearchSpec)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    resources: Resources = Field(default_factory=Resources)
    max_concurrent: int = Field(0, ge=0, description="trials running at once; 0 = as many as "
                                                     "the cluster's resources allow")
    seeds: list[int] | SeedAxes = Field(
        default_factory=lambda: [0],
        description="a list = fine-tuning seeds (world and pre-training replicate 0), or {world: [...], "
                    "pretrain: [...], finetune: [...]} (their cross product); each combination is a "
                    "replicate: stage-1 trials run once per replicate, stage-2 trials evaluate all")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI; default "
                                                       "sqlite:///<repo>/outputs/mlflow.db")
    storage: str | None = Field(None, description="Ray Tune storage (path or URI); default "
                                                  "<repo>/outputs/ray_results")
    max_failures: int = Field(2, ge=0, description="retries of a failing trial")
    published: list[Published] = Field(
        default_factory=list, description="published numbers (LIFT, the paper) shown beside ours")

    _source: "Source | None" = PrivateAttr(default=None)

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, v: "list[int] | SeedAxes") -> "list[int] | SeedAxes":
        if isinstance(v, list):
            if not v:
                raise ValueError("give at least one seed")
            seed_axes(v)  # distinct
        return v

    def seed_axes(self) -> SeedAxes:
        """The study's three seed axes (a plain list = fine-tuning seeds)."""
        return seed_axes(self.seeds)

    def replicates(self) -> list[Replicate]:
        """Every replicate (world x pretrain x finetune seed) the study runs."""
        return self.seed_axes().replicates()

    @model_validator(mode="after")
    def _resolve_locations(self) -> "Study":
        # Resolved here so that the dumped spec (logged, hashed) says where results went, and so
        # that Ray workers (which run in another working directory) get absolute paths.
        if self.tracking_uri is None:
            self.tracking_uri = paths.default_tracking_uri()
        if self.storage is None:
            self.storage = paths.default_storage()
        elif paths.is_local(self.storage):
            self.storage = str(paths.local_path(self.storage))
        if self.scheduler.asha is not None and self.scheduler.asha.max_t is None:
            epochs = [self.finetune.epochs] + [v for v in self.grid.get("finetune.epochs", [])
                                               if isinstance(v, int)] + [
                b["finetune.epochs"] for axis in self.grid.values() if isinstance(axis, dict)
                for b in axis.values() if isinstance(b.get("finetune.epochs"), int)]
            self.scheduler.asha.max_t = max(1, *epochs)
        return self

    @property
    def source(self) -> "Source | None":
        """Where the study came from (file, line of each node, command-line overrides)."""
        return self._source

    def spec_hash(self) -> str:
        """sha256 of the resolved spec JSON, without where/how fast it runs (storage,
        tracking_uri, max_concurrent) and the published numbers it is compared with, so a study
        moved to a cluster keeps its identity."""
        data = self.model_dump(mode="json", exclude=set(_LOCATION_FIELDS) | {"published"})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def to_yaml(self) -> str:
        """The resolved spec as YAML (every default filled in): what MLflow logs."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# --------------------------------------------------------------------------------------------
# Paths: static resolution against the models (for did-you-mean), get/set on documents.
# --------------------------------------------------------------------------------------------

def split_path(path: str) -> list[Segment]:
    """'backbones.0.name' -> ['backbones', 0, 'name'] ('*' stays a string)."""
    return [int(s) if s.lstrip("-").isdigit() else s for s in path.split(".")]


def join_path(segments: Iterable[Segment]) -> str:
    """The inverse of ``split_path``."""
    return ".".join(str(s) for s in segments)


def _unwrap(annotation: Any) -> list[Any]:
    """The non-None members of an Optional/Union annotation (or the annotation itself)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [a for arg in typing.get_args(annotation) if arg is not type(None) for a in _unwrap(arg)]
    return [annotation]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def resolve_path(model: type[BaseModel], segments: Sequence[Segment],
                 roots: Sequence[str] | None = None) -> tuple[list[Segment], Any]:
    """Check ``segments`` against ``model``'s fields; return (segments with a dict key joined,
    the annotation at the end). Raises ValueError with a did-you-mean when a field does not exist.

    A ``dict[str, X]`` field takes the rest of the path as one key (grid axes contain dots).
    """
    annotation: Any = model
    out: list[Segment] = []
    for i, seg in enumerate(segments):
        where = join_path(out) or "the study"
        members = _unwrap(annotation)
        sub = next((m for m in members if _is_model(m)), None)
        seq = next((m for m in members if typing.get_origin(m) is list), None)
        mapping = next((m for m in members if typing.get_origin(m) is dict), None)
        if sub is not None and isinstance(seg, str) and seg != "*":
            known = list(sub.model_fields) if (i or roots is None) else list(roots)
            if seg not in known:
                raise ValueError(f"no field {seg!r} in {where}{did_you_mean(seg, known)} "
                                 f"(fields: {', '.join(known)})")
            annotation = sub.model_fields[seg].annotation
            out.append(seg)
        elif seq is not None and (isinstance(seg, int) or seg == "*"):
            annotation = (typing.get_args(seq) or (Any,))[0]
            out.append(seg)
        elif mapping is not None:
            out.append(join_path(segments[i:]))
            return out, (typing.get_args(mapping) or (str, Any))[1]
        elif sub is not None:
            raise ValueError(f"{where} is a mapping: {seg!r} is not one of its fields "
                             f"({', '.join(sub.model_fields)})")
        elif seq is not None:
            raise ValueError(f"{where} is a list: index it with an integer or '*', not {seg!r}")
        else:
            raise ValueError(f"{where} is a single value, it has no field {seg!r}")
    return out, annotation


def get_path(doc: Any, segments: Sequence[Segment]) -> Any:
    """The value at ``segments`` in a nested dict/list document (``*`` gives a list)."""
    if not segments:
        return doc
    seg, rest = segments[0], segments[1:]
    if seg == "*":
        if not isinstance(doc, list):
            raise KeyError(f"'*' needs a list, found {show_value(doc)}")
        return [get_path(item, rest) for item in doc]
    if isinstance(doc, list) and isinstance(seg, int):
        if not -len(doc) <= seg < len(doc):
            raise KeyError(f"index {seg} is out of range: the list has {len(doc)} item(s)")
        return get_path(doc[seg], rest)
    if isinstance(doc, dict) and seg in doc:
        return get_path(doc[seg], rest)
    raise KeyError(f"{seg!r} does not exist here")


def set_path(doc: Any, segments: Sequence[Segment], value: Any) -> None:
    """Set ``value`` at ``segments`` in place (``*`` sets it in every list item); missing or null
    mappings on the way are created. Raises KeyError for an index out of range."""
    seg, rest = segments[0], segments[1:]
    if seg == "*" or isinstance(seg, int):
        if not isinstance(doc, list):
            raise KeyError(f"{seg!r} needs a list, found {show_value(doc)}")
        if seg != "*" and not -len(doc) <= seg < len(doc):
            raise KeyError(f"index {seg} is out of range: the list has {len(doc)} item(s)")
        targets = range(len(doc)) if seg == "*" else [seg]
    else:
        if not isinstance(doc, dict):
            raise KeyError(f"{seg!r} needs a mapping, found {show_value(doc)}")
        targets = [seg]
    for t in targets:
        if not rest:
            doc[t] = copy.deepcopy(value)
            continue
        if isinstance(doc, dict) and doc.get(t) is None:
            if isinstance(rest[0], int) or rest[0] == "*":
                raise KeyError(f"{t!r} is not set here, so it has no item {rest[0]!r}: set the "
                               f"whole list instead, e.g. {t}=[...]")
            doc[t] = {}
        set_path(doc[t], rest, value)


def _matches(pattern: Sequence[Segment], concrete: Sequence[Segment]) -> bool:
    """True when ``pattern`` (with '*') is a prefix of the concrete path ``concrete``."""
    return len(pattern) <= len(concrete) and all(
        p == "*" or p == c or str(p) == str(c) for p, c in zip(pattern, concrete))


# --------------------------------------------------------------------------------------------
# Source: the YAML file's lines and the command-line overrides, to place every error.
# --------------------------------------------------------------------------------------------

@dataclass
class Source:
    """Lines of the nodes of a study file and the paths command-line flags set."""

    file: str
    lines: dict[PathTuple, int] = field(default_factory=dict)
    origins: list[tuple[PathTuple, str]] = field(default_factory=list)  # (path, flag text)

    def locate(self, path: Sequence[Segment]) -> tuple[int | None, str | None]:
        """(line, flag) of the deepest known node on ``path``; flag when an override set it."""
        path = tuple(path)
        for prefix, flag in reversed(self.origins):
            if _matches(prefix, path) or _matches(path, prefix):
                return None, flag
        for n in range(len(path), -1, -1):
            key = tuple(str(s) if isinstance(s, str) else s for s in path[:n])
            if key in self.lines:
                return self.lines[key], None
        return None, None

    def issue(self, path: Sequence[Segment], message: str, value: Any = None, *,
              has_value: bool = True, line_path: Sequence[Segment] | None = None,
              context: str | None = None) -> Issue:
        """An Issue for ``path`` placed at the line of ``line_path`` (default: ``path``)."""
        line, origin = self.locate(path if line_path is None else line_path)
        kw = {"value": value} if has_value else {}
        return Issue(path=join_path(path), message=message, line=line, origin=origin,
                     context=context, **kw)


# --------------------------------------------------------------------------------------------
# Limits: a study file is small; anything far larger is a mistake or an attack (an alias bomb
# expands a 1 KB file into gigabytes). Each limit is checked before the costly step it guards.
# --------------------------------------------------------------------------------------------

MAX_STUDY_BYTES = 1_000_000
"""Largest study file read (bytes)."""
MAX_YAML_ALIASES = 100
"""Most alias references (``*name``) in a study file."""
MAX_YAML_NODES = 100_000
"""Most YAML nodes (mapping keys, values, list items) after aliases are expanded."""
MAX_LIST_ITEMS = 10_000
"""Longest list anywhere in a study (seeds, grid values, ...)."""
MAX_STUDY_TRIALS = 100_000
"""Most trials a study may plan: grid cells x seeds x configurations per cell (before expansion)."""


def _check_yaml_size(node: yaml.Node, file: str) -> None:
    """Refuse a composed document with too many aliases, nodes (expanded) or list items."""
    sizes: dict[int, int] = {}
    refs: dict[int, int] = {}
    busy: set[int] = set()
    issues: list[Issue] = []

    def size(n: yaml.Node) -> int:
        key = id(n)
        if key in sizes:
            return sizes[key]
        if key in busy:
            raise SpecError([Issue("", "an alias refers to a node that contains it (a recursive "
                                   "structure); remove the alias", line=n.start_mark.line + 1)], file)
        busy.add(key)
        children: list[yaml.Node] = []
        if isinstance(n, yaml.MappingNode):
            children = [c for pair in n.value for c in pair]
        elif isinstance(n, yaml.SequenceNode):
            children = list(n.value)
            if len(children) > MAX_LIST_ITEMS and not issues:
                issues.append(Issue("", f"a list of {len(children)} items; at most "
                                    f"{MAX_LIST_ITEMS} are allowed (MAX_LIST_ITEMS)",
                                    line=n.start_mark.line + 1))
        total = 1
        for child in children:
            refs[id(child)] = refs.get(id(child), 0) + 1
            total += size(child)
        busy.discard(key)
        sizes[key] = total
        return total

    try:
        total = size(node)
    except RecursionError:
        raise SpecError([Issue("", "the YAML is nested too deeply; flatten it")], file) from None
    aliases = sum(n - 1 for n in refs.values() if n > 1)
    if aliases > MAX_YAML_ALIASES:
        issues.append(Issue("", f"{aliases} alias references; at most {MAX_YAML_ALIASES} are "
                            "allowed (MAX_YAML_ALIASES): write the values out"))
    if total > MAX_YAML_NODES:
        issues.append(Issue("", f"{total} YAML nodes once aliases are expanded; at most "
                            f"{MAX_YAML_NODES} are allowed (MAX_YAML_NODES)"))
    if issues:
        raise SpecError(issues, file)


def check_study_size(study: "Study", source: "Source") -> None:
    """Refuse a study planning more than MAX_STUDY_TRIALS trials, counted without expanding the
    grid: cells (product of the grid's list lengths) x seeds x configurations per cell."""
    cells = math.prod(len(v) for v in study.grid.values()) if study.grid else 1
    samples = 1
    if study.search.space:
        samples = study.search.num_samples or 10
        if study.search.algorithm == "grid" and not study.search.num_samples:
            try:
                samples = grid_size(study.search.space)
            except ValueError:  # reported by _check_search, with the field
                samples = 1
    axes = study.seed_axes()
    replicates = len(axes.world) * len(axes.pretrain) * len(axes.finetune)
    trials = cells * replicates * samples
    if trials > MAX_STUDY_TRIALS:
        raise SpecError([source.issue(("grid",) if study.grid else (), (
            f"the study would plan about {trials:,} trials ({cells:,} cells x {replicates:,} "
            f"replicates x {samples:,} configurations); at most {MAX_STUDY_TRIALS:,} are allowed "
            "(MAX_STUDY_TRIALS): shrink the grid, the seeds or search.num_samples"),
            has_value=False)], source.file)


def _compose(text: str, file: str) -> tuple[Any, dict[PathTuple, int]]:
    """``yaml.safe_load`` of ``text`` plus the 1-based line of every mapping key and list item."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_yaml_size(node, file)
        data = loader.construct_document(node) if node is not None else None
    except RecursionError:
        raise SpecError([Issue("", "the YAML is nested too deeply; flatten it")], file) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = " ".join(str(x) for x in (e.context, e.problem) if x)
        raise SpecError([Issue("", f"YAML syntax error: {problem}", line=line)], file) from None
    except yaml.YAMLError as e:
        raise SpecError([Issue("", f"YAML error: {e}")], file) from None
    finally:
        loader.dispose()
    lines: dict[PathTuple, int] = {}
    issues: list[Issue] = []

    def walk(n: yaml.Node, path: PathTuple) -> None:
        if isinstance(n, yaml.MappingNode):
            first: dict[Any, int] = {}
            for k, v in n.value:
                key: Segment = k.value if isinstance(k, yaml.ScalarNode) else str(k.value)
                line = k.start_mark.line + 1
                if key in first and key != "<<":
                    issues.append(Issue(join_path(path + (key,)), f"key {key!r} appears twice "
                                        f"(first on line {first[key]}); keep one", line=line))
                first.setdefault(key, line)
                lines[path + (key,)] = line
                walk(v, path + (key,))
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                lines[path + (i,)] = item.start_mark.line + 1
                walk(item, path + (i,))

    if node is not None:
        walk(node, ())
    if issues:
        raise SpecError(issues, file)
    return data, lines


# --------------------------------------------------------------------------------------------
# pydantic errors -> Issues with plain-words expectations.
# --------------------------------------------------------------------------------------------

def _num(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


_EXPECT = {
    "missing": lambda c: "is required",
    "greater_than_equal": lambda c: f"must be >= {_num(c['ge'])}",
    "greater_than": lambda c: f"must be > {_num(c['gt'])}",
    "less_than_equal": lambda c: f"must be <= {_num(c['le'])}",
    "less_than": lambda c: f"must be < {_num(c['lt'])}",
    "int_type": lambda c: "must be an integer",
    "int_parsing": lambda c: "must be an integer",
    "int_from_float": lambda c: "must be an integer",
    "float_type": lambda c: "must be a number",
    "float_parsing": lambda c: "must be a number",
    "bool_type": lambda c: "must be true or false",
    "bool_parsing": lambda c: "must be true or false",
    "string_type": lambda c: "must be a string",
    "list_type": lambda c: "must be a list",
    "dict_type": lambda c: "must be a mapping (key: value)",
    "model_type": lambda c: "must be a mapping (key: value)",
    "model_attributes_type": lambda c: "must be a mapping (key: value)",
    "literal_error": lambda c: f"must be one of {c['expected']}",
    "too_short": lambda c: f"must have at least {c['min_length']} item(s)",
    "too_long": lambda c: f"must have at most {c['max_length']} item(s)",
    "string_pattern_mismatch": lambda c: f"must match the pattern {c['pattern']}",
}
_PATTERN_HELP = {"name": "must be a slug: lowercase letters, digits, '-' and '_', starting with a "
                         "letter or digit, at most 64 characters"}


def _field_info(model: type[BaseModel], loc: Sequence[Segment]) -> tuple[list[Segment], Any, Any]:
    """(loc without union-member tags, the FieldInfo of the last field, the parent model)."""
    annotation: Any = model
    clean: list[Segment] = []
    info = parent = None
    for seg in loc:
        members = _unwrap(annotation)
        sub = next((m for m in members if _is_model(m)), None)
        seq = next((m for m in members if typing.get_origin(m) is list), None)
        mapping = next((m for m in members if typing.get_origin(m) is dict), None)
        if sub is not None and isinstance(seg, str) and seg in sub.model_fields:
            parent, info = sub, sub.model_fields[seg]
            annotation = info.annotation
        elif seq is not None and isinstance(seg, int):
            annotation, info = (typing.get_args(seq) or (Any,))[0], None
        elif mapping is not None and isinstance(seg, str):
            annotation, info = (typing.get_args(mapping) or (str, Any))[1], None
        elif sub is not None and isinstance(seg, str) and len(members) == 1:
            parent, info, annotation = sub, None, Any  # an unknown key (extra_forbidden)
        else:
            continue  # a union member tag such as 'function-after[...]' or 'list[int]'
        clean.append(seg)
    return clean, info, parent


def pydantic_issues(err: ValidationError, model: type[BaseModel], source: Source,
                    prefix: PathTuple = (), context: str | None = None,
                    line_path: Sequence[Segment] | None = None) -> list[Issue]:
    """Turn a ValidationError on ``model`` into Issues (paths prefixed by ``prefix``)."""
    issues: list[Issue] = []
    seen: set[str] = set()
    for e in err.errors(include_url=False):
        loc, info, parent = _field_info(model, e["loc"])
        kind, ctx = e["type"], e.get("ctx") or {}
        if kind == "extra_forbidden":
            known = list(parent.model_fields) if parent is not None else []
            key = str(loc[-1]) if loc else "?"
            message = (f"unknown field {key!r}{did_you_mean(key, known)}"
                       + (f" (fields here: {', '.join(known)})" if known else ""))
        elif kind == "value_error" and "error" in ctx:
            message = str(ctx["error"])
        elif kind == "string_pattern_mismatch" and loc and loc[-1] in _PATTERN_HELP:
            message = _PATTERN_HELP[str(loc[-1])]
        elif kind in _EXPECT:
            message = _EXPECT[kind](ctx)
        else:
            message = e["msg"]
        if info is not None and info.description and kind not in ("extra_forbidden", "value_error"):
            message += f" ({info.description})"
        path = prefix + tuple(loc)
        if join_path(path) in seen:  # a union reports one problem per member
            continue
        seen.add(join_path(path))
        issues.append(source.issue(path, message, e["input"], has_value=kind != "missing",
                                   line_path=line_path, context=context))
    return issues


# --------------------------------------------------------------------------------------------
# Overrides (--set path=value and the CLI's location flags).
# --------------------------------------------------------------------------------------------

def parse_override(text: str) -> tuple[str, Any]:
    """'finetune.lr=0.1' -> ('finetune.lr', 0.1): the value is parsed as YAML."""
    if "=" not in text:
        raise ValueError("expected PATH=VALUE, e.g. --set finetune.lr=0.01")
    path, raw = text.split("=", 1)
    path = path.strip()
    if not path:
        raise ValueError("the path before '=' is empty")
    try:
        return path, yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ValueError(f"the value {raw!r} is not valid YAML: {e}") from None


def _apply_override(doc: dict, path: str, value: Any, flag: str, source: Source) -> None:
    """Set a study path in the raw document; an unknown path fails naming ``flag``."""
    try:
        segments, _ = resolve_path(Study, split_path(path))
        set_path(doc, segments, value)
    except (ValueError, KeyError) as e:
        msg = e.args[0] if e.args else str(e)
        raise SpecError([Issue(path, f"bad {flag.split()[0]} path: {msg}", origin=flag)],
                        source.file) from None
    source.origins.append((tuple(segments), flag))


# --------------------------------------------------------------------------------------------
# Registries and cross-field checks the trial-config models cannot see.
# --------------------------------------------------------------------------------------------

def method_kind(name: str) -> str:
    """'train', 'posthoc' or 'ensemble': the kind of a registered method (KeyError if unknown)."""
    from trainables.methods import METHODS  # may import torch: only after cheap checks passed
    return METHODS.get(name).kind


def _method_names() -> list[str]:
    from trainables.methods import METHODS
    return METHODS.names()


def trial_problems(trial: dict) -> list[tuple[PathTuple, Any, str]]:
    """(trial path, value, message) for names missing from the registries and settings the
    trial could not run with (a backdoor over more strata than the pool has, ...)."""
    from trainables.data import dataset_names

    problems: list[tuple[PathTuple, Any, str]] = []
    datasets = dataset_names()
    if trial["dataset"]["name"] not in datasets:
        name = trial["dataset"]["name"]
        problems.append((("dataset", "name"), name, f"unknown dataset{did_you_mean(name, datasets)} "
                                                    f"(known: {', '.join(datasets)})"))
    methods = _method_names()
    kinds: dict[PathTuple, str] = {}
    for path in (("method", "name"), ("method", "base_method"), ("backdoor", "stratum_method", "name")):
        name = get_path(trial, path)
        if name not in methods:
            problems.append((path, name, f"unknown method{did_you_mean(name, methods)} "
                                         f"(known: {', '.join(methods)})"))
        else:
            kinds[path] = method_kind(name)
    for path in (("method", "base_method"), ("backdoor", "stratum_method", "name")):
        if kinds.get(path) not in (None, "train"):
            problems.append((path, get_path(trial, path),
                             f"must be a training method (kind 'train'), not a {kinds[path]!r} one"))
    if kinds.get(("method", "name")) == "ensemble":
        problems += _backdoor_problems(trial)
        problems += _weighting_problems(trial)
        problems += _baseline_problems(trial, methods)
    problems += _class_name_problems(trial, kinds)
    root = trial["dataset"]["root"]
    if root and not Path(root).expanduser().is_dir():
        problems.append((("dataset", "root"), root, "no such folder: give the folder holding the "
                                                    "data set's files (or leave root unset)"))
    fault = trial["runtime"]["fault"]
    if fault is not None and not re.fullmatch(r"(nan|crash)_at_epoch:\d+", fault):
        problems.append((("runtime", "fault"), fault, "must be nan_at_epoch:N or crash_at_epoch:N "
                                                      "(testing only; leave unset otherwise)"))
    return problems


def _baseline_problems(trial: dict, methods: list[str]) -> list[tuple[PathTuple, Any, str]]:
    """backdoor.baselines: single-model methods (training, or post-hoc on a training base)."""
    problems: list[tuple[PathTuple, Any, str]] = []
    for i, m in enumerate(trial["backdoor"]["baselines"]):
        path: PathTuple = ("backdoor", "baselines", i, "name")
        if m["name"] not in methods:
            problems.append((path, m["name"], f"unknown method{did_you_mean(m['name'], methods)} "
                                              f"(known: {', '.join(methods)})"))
            continue
        kind = method_kind(m["name"])
        if kind == "ensemble":
            problems.append((path, m["name"], "a baseline is a single-model method (training or "
                                              "post-hoc), not an ensemble"))
        elif kind == "posthoc" and (m["base_method"] not in methods or method_kind(m["base_method"]) != "train"):
            problems.append((("backdoor", "baselines", i, "base_method"), m["base_method"],
                             "must be a training method (kind 'train') whose logits the post-hoc baseline corrects"))
    return problems


def _weighting_problems(trial: dict) -> list[tuple[PathTuple, Any, str]]:
    """backdoor.weighting against its registry, and the aggregation space it needs."""
    from trainables.methods.weighting import WEIGHTINGS, check_space

    name, space = trial["backdoor"]["weighting"], trial["backdoor"]["aggregation"]
    if name not in WEIGHTINGS:
        known = WEIGHTINGS.names()
        return [(("backdoor", "weighting"), name, f"unknown weighting rule{did_you_mean(name, known)} "
                                                  f"(known: {', '.join(known)})")]
    try:
        check_space(name, space)
    except ValueError as e:
        return [(("backdoor", "aggregation"), space, str(e))]
    return []


def _class_name_problems(trial: dict, kinds: dict[PathTuple, str]) -> list[tuple[PathTuple, Any, str]]:
    """Placeholder class names (class_<i>) where a text tower reads them: a text-initialised head,
    or a method that needs zero-shot logits (q_hat), on an open_clip backbone."""
    from trainables.config import DatasetConfig
    from trainables.data.names import placeholder_names
    from trainables.methods import METHODS

    if not placeholder_names(DatasetConfig.model_validate(trial["dataset"])):
        return []
    ensemble = kinds.get(("method", "name")) == "ensemble"
    models = trial["pool"] if ensemble else [trial["backbone"]]
    if not any(b["family"] == "open_clip" for b in models):
        return []
    needs = []
    if trial["finetune"]["head"] == "text":
        needs.append("finetune.head 'text'")
    names = [("method.name", trial["method"]["name"])]
    if ensemble:
        names.append(("backdoor.stratum_method.name", trial["backdoor"]["stratum_method"]["name"]))
        if trial["backdoor"]["debias"] == "prior":
            needs.append("the backdoor's q_hat (debias prior)")
    needs += [f"{field} {name!r} (zero-shot logits)" for field, name in names
              if name in METHODS and getattr(METHODS.get(name), "needs_prior", False)]
    if not needs:
        return []
    return [(("dataset", "classnames"), None,
             f"{trial['dataset']['name']} would get placeholder class names class_0, class_1, ... and "
             f"{', '.join(needs)} reads them through the text tower; set dataset.classnames to the "
             "class-name file (one name per line, '<id> <name>' lines or iNaturalist's categories.json)")]


def _backdoor_problems(trial: dict) -> list[tuple[PathTuple, Any, str]]:
    """Checks of the backdoor section against the pool, only for cells that use it."""
    bd, pool = trial["backdoor"], len(trial["pool"])
    problems: list[tuple[PathTuple, Any, str]] = []
    if bd["strata_source"] != "pool":
        return problems
    if bd["strata"] is not None:
        bad = [i for i in bd["strata"] if not 0 <= i < pool]
        if not bd["strata"] or bad or len(set(bd["strata"])) != len(bd["strata"]):
            problems.append((("backdoor", "strata"), bd["strata"],
                             f"must be distinct indices into the pool of {pool} backbone(s): "
                             f"a non-empty subset of 0..{pool - 1}"))
    elif bd["confounders"] > pool:
        problems.append((("backdoor", "confounders"), bd["confounders"],
                         f"must be <= {pool}, the number of backbones in the pool (or add backbones)"))
    if bd["weights"] is not None and (len(bd["weights"]) != pool or min(bd["weights"]) < 0):
        problems.append((("backdoor", "weights"), bd["weights"],
                         f"must be {pool} non-negative weights, one per pool member"))
    return problems


# --------------------------------------------------------------------------------------------
# Grid expansion: every cell validated as a TrialConfig.
# --------------------------------------------------------------------------------------------

@dataclass
class GridPoint:
    """One cell of the grid before planning: its axis values and validated trial config."""

    index: int
    id: str
    label: str
    values: dict[str, Any]
    indices: tuple[int, ...]  # the value index on each axis
    sections: dict  # the study's trial sections after applying the values (study paths)
    trial: dict     # TrialConfig.model_dump(mode="json")


def cell_ids(n: int) -> list[str]:
    """'c00'..'cNN' (at least two digits, more when needed)."""
    width = max(2, len(str(max(n - 1, 0))))
    return [f"c{i:0{width}d}" for i in range(n)]


def cell_label(values: dict[str, Any]) -> str:
    """'dataset.imbalance_ratio=10 method.name=la' ('(base)' for a study without a grid)."""
    return " ".join(f"{k}={show_value(v)}" for k, v in values.items()) or "(base)"


def _runtime(study: Study) -> dict:
    """The trial runtime: cache and zoo under a local storage unless set; paths made absolute
    because Ray runs trials in their own working directories."""
    rt = study.runtime.model_dump(mode="json")
    local = study.storage is not None and paths.is_local(study.storage)
    defaults = {"cache_dir": paths.stage1_cache_dir, "zoo_dir": paths.zoo_dir}
    for key, default in defaults.items():
        if key not in study.runtime.model_fields_set and local:
            rt[key] = str(default(study.storage))
        else:
            rt[key] = str(Path(rt[key]).expanduser().resolve())
    if rt["data_root"]:
        rt["data_root"] = str(Path(rt["data_root"]).expanduser().resolve())
    return rt


def trial_config(sections: dict, study: Study) -> dict:
    """The TrialConfig dict of a cell from its (study-path) sections."""
    backbones = sections["backbones"]
    return {
        "dataset": sections["dataset"],
        "backbone": backbones[sections["backbone_index"]],
        "pool": backbones,
        "finetune": sections["finetune"],
        "method": sections["method"],
        "backdoor": sections["backdoor"],
        "seed": study.replicates()[0].finetune,
        "replicates": [r.model_dump() for r in study.replicates()],
        "runtime": _runtime(study),
    }


def _to_study_path(trial_path: Sequence[Segment], backbone_index: int) -> PathTuple:
    """The study path a trial path comes from (backbone -> backbones.<index>, pool -> backbones)."""
    head, rest = trial_path[0] if trial_path else "", tuple(trial_path[1:])
    if head == "backbone":
        return ("backbones", backbone_index) + rest
    if head == "pool":
        return ("backbones",) + rest
    if head in ("seed", "replicates"):
        return ("seeds",)
    return tuple(trial_path)


def expand_grid(study: Study) -> list[GridPoint]:
    """Every grid cell (full cross product, axes in file order), each validated; SpecError lists
    each problem once, naming the cells it occurs in."""
    source = study.source or Source(file="<study>")
    base = study.model_dump(mode="json", include=set(GRID_ROOTS))
    # Each axis: its name, its value labels, and per value the (study path, value) it sets. A plain
    # axis sets its own path; a bundle axis {label: {path: value}} sets each label's paths.
    axes: list[tuple[str, list[Any]]] = []
    settings: list[list[list[tuple[list[Segment], Any]]]] = []
    resolved: list[list[list[Segment]]] = []  # per axis, the study paths it sets
    issues: list[Issue] = []
    for axis, values in study.grid.items():
        if not values:
            issues.append(source.issue(("grid", axis), "an axis needs at least one value", values))
            continue
        bundle = isinstance(values, dict)
        per_value = list(values.values()) if bundle else [{axis: v} for v in values]
        paths: dict[str, list[Segment]] = {}
        ok = True
        for j, assignment in enumerate(per_value):
            for path in assignment:
                if path in paths:
                    continue
                try:
                    paths[path], _ = resolve_path(TrialSections, split_path(path), roots=GRID_ROOTS)
                except ValueError as e:
                    where = ("grid", axis, list(values)[j], path) if bundle else ("grid", axis)
                    issues.append(source.issue(where, f"not a study path: {e}", has_value=False))
                    ok = False
        if not ok:
            continue
        try:  # indices must exist in the study (a '*' or a field creates nothing new)
            for path, value in per_value[0].items():
                set_path(copy.deepcopy(base), paths[path], value)
        except KeyError as e:
            issues.append(source.issue(("grid", axis), f"cannot be applied: {e.args[0]}",
                                       has_value=False))
            continue
        axes.append((axis, list(values)))
        settings.append([[(paths[p], v) for p, v in a.items()] for a in per_value])
        resolved.append(list(paths.values()))
    if issues:
        raise SpecError(issues, source.file)

    combos = list(itertools.product(*(range(len(v)) for _, v in axes)))
    ids = cell_ids(len(combos))
    found: dict[str, tuple[Issue, list[GridPoint]]] = {}
    points: list[GridPoint] = []
    for index, combo in enumerate(combos):
        values = {axis: vals[j] for (axis, vals), j in zip(axes, combo)}
        label = cell_label(values)
        cell = GridPoint(index, ids[index], label, values, combo, {}, {})

        def axis_of(study_path: Sequence[Segment]) -> tuple[PathTuple, Any] | None:
            """The grid value node responsible for a study path (last matching axis wins)."""
            for k in reversed(range(len(axes))):
                if any(_matches(r, study_path) for r in resolved[k]):
                    return ("grid", axes[k][0], combo[k]), axes[k][1][combo[k]]
            return None

        def record(path: PathTuple, value: Any, message: str, has_value: bool = True) -> None:
            hit = axis_of(path)
            line_path = hit[0] if hit else path
            issue = source.issue(path, message, value, has_value=has_value, line_path=line_path)
            if hit:
                issue = Issue(issue.path, issue.message, issue.value, issue.line, issue.origin,
                              f"grid axis {hit[0][1]} = {show_value(hit[1])}")
            found.setdefault(issue.format(source.file), (issue, []))[1].append(cell)

        doc = copy.deepcopy(base)
        try:
            for k in range(len(axes)):
                for segments, value in settings[k][combo[k]]:
                    set_path(doc, segments, value)
        except KeyError as e:
            record(("grid", axes[k][0]), None, f"cannot be applied: {e.args[0]}", has_value=False)
            continue
        try:
            sections = TrialSections.model_validate(doc).model_dump(mode="json")
        except ValidationError as err:
            for iss in pydantic_issues(err, TrialSections, source):
                record(tuple(split_path(iss.path)) if iss.path else (), iss.value, iss.message,
                       has_value=iss.value is not None or "required" not in iss.message)
            continue
        bi = sections["backbone_index"]
        if bi >= len(sections["backbones"]):
            record(("backbone_index",), bi, f"must be < {len(sections['backbones'])}, the number "
                                            "of backbones (an index into backbones)")
            continue
        trial = trial_config(sections, study)
        try:
            trial = TrialConfig.model_validate(trial).model_dump(mode="json")
        except ValidationError as err:
            for e in err.errors(include_url=False):
                record(_to_study_path(e["loc"], bi), e["input"], e["msg"])
            continue
        for path, value, message in trial_problems(trial):
            record(_to_study_path(path, bi), value, message)
        points.append(GridPoint(index, ids[index], label, values, combo, sections, trial))
    if found:
        raise SpecError([_with_cells(issue, cells, len(combos)) for issue, cells in found.values()],
                        source.file)
    _check_duplicates(points, axes, source)
    return points


def _with_cells(issue: Issue, cells: list[GridPoint], total: int) -> Issue:
    """The issue with the cells it occurs in added to its context."""
    if total == 1 and cells[0].label == cell_label({}):
        return issue  # a study without a grid: the cell adds nothing
    if len(cells) == 1:
        where = f"in cell {cells[0].id} \"{cells[0].label}\""
    elif len(cells) == total:
        where = f"in every cell ({total})"
    else:
        where = "in cells " + ", ".join(c.id for c in cells)
    context = f"{issue.context}, {where}" if issue.context else where
    return Issue(issue.path, issue.message, issue.value, issue.line, issue.origin, context)


def _check_duplicates(points: list[GridPoint], axes: list[tuple[str, list[Any]]],
                      source: Source) -> None:
    """Two cells with the same trial config would run (and count) the same trials twice."""
    first: dict[str, GridPoint] = {}
    issues: list[Issue] = []
    for p in points:
        key = json.dumps(p.trial, sort_keys=True)
        if key not in first:
            first[key] = p
            continue
        q = first[key]
        diff = [k for k in range(len(axes)) if p.indices[k] != q.indices[k]]
        k = diff[-1]  # distinct grid points differ on at least one axis
        axis, j = axes[k][0], p.indices[k]
        issues.append(source.issue(
            ("grid", axis), f"value {show_value(p.values[axis])} gives the same trial config as "
                            f"{show_value(q.values[axis])} (cells {q.id} \"{q.label}\" and {p.id} "
                            f"\"{p.label}\" are identical); remove the repeat", p.values[axis],
            line_path=("grid", axis, j)))
        if len(issues) >= 3:
            break
    if issues:
        raise SpecError(issues, source.file)


# --------------------------------------------------------------------------------------------
# The search space, checked per searched cell.
# --------------------------------------------------------------------------------------------

def searched(study: Study, point: GridPoint) -> bool:
    """True when ``search.where`` (study paths -> allowed values) admits this cell."""
    if not study.search.space:
        return False
    for path, allowed in (study.search.where or {}).items():
        if isinstance(study.grid.get(path), dict):  # a bundle axis: its labels
            value = point.values.get(path)
        else:
            try:
                value = get_path(point.sections, resolve_path(TrialSections, split_path(path))[0])
            except (KeyError, ValueError):
                return False
        if value not in allowed:
            return False
    return True


def _check_search(study: Study, points: list[GridPoint]) -> None:
    """Space and where paths exist; sampled extremes give valid trials; no grid/search overlap."""
    source = study.source or Source(file="<study>")
    issues: list[Issue] = []
    space: dict[str, list[Segment]] = {}
    for path in study.search.space:
        try:
            space[path], _ = resolve_path(TrialConfig, split_path(path), roots=SEARCH_ROOTS)
        except ValueError as e:
            issues.append(source.issue(("search", "space", path), f"not a trial path: {e}",
                                       has_value=False))
    for path, allowed in (study.search.where or {}).items():
        try:
            if not isinstance(study.grid.get(path), dict):
                resolve_path(TrialSections, split_path(path), roots=GRID_ROOTS)
        except ValueError as e:
            issues.append(source.issue(("search", "where", path), f"not a study path: {e}",
                                       has_value=False))
        if not allowed:
            issues.append(source.issue(("search", "where", path), "needs at least one value", allowed))
    order = list(study.search.space)
    for path, dist in study.search.space.items():
        for cond in condition(dist):
            if cond in study.search.space:
                if order.index(cond) >= order.index(path):
                    issues.append(source.issue(("search", "space", path, "when"), f"{cond!r} is searched "
                                               f"after {path!r}: list the parameter a condition reads first",
                                               has_value=False))
                continue
            try:
                resolve_path(TrialConfig, split_path(cond), roots=SEARCH_ROOTS)
            except ValueError as e:
                issues.append(source.issue(("search", "space", path, "when"), f"{cond!r} is not a trial "
                                           f"path: {e}", has_value=False))
        if study.search.algorithm == "grid" and condition(dist):
            issues.append(source.issue(("search", "space", path, "when"), "algorithm grid enumerates "
                                       "every combination, so a condition cannot skip a parameter; use "
                                       "optuna or random, or sweep the condition as a grid axis",
                                       has_value=False))
    swept = [(axis, p) for axis, values in study.grid.items()
             for p in (sorted({q for b in values.values() for q in b}) if isinstance(values, dict) else [axis])]
    for path, segments in space.items():
        for axis, swept_path in swept:
            a = split_path(swept_path)
            if a[0] in SEARCH_ROOTS and (_matches(a, segments) or _matches(segments, a)):
                issues.append(source.issue(("search", "space", path), f"is also the grid axis {axis!r}: "
                                           "a parameter is either swept or searched", has_value=False))
    if study.search.algorithm == "grid":
        for path, dist in study.search.space.items():
            if "categorical" not in dist:
                issues.append(source.issue(("search", "space", path), "algorithm grid needs "
                                           "{categorical: [...]} distributions", dist))
        size = math.prod(len(d.get("categorical", ())) for d in study.search.space.values())
        if study.search.space and study.search.num_samples not in (None, size):
            issues.append(source.issue(("search", "num_samples"), f"algorithm grid tries all {size} "
                                       "combinations of the space; remove num_samples or set it "
                                       f"to {size}", study.search.num_samples))
    if issues:
        raise SpecError(issues, source.file)
    chosen = [p for p in points if searched(study, p)]
    if study.search.space and study.search.where and not chosen:
        raise SpecError([source.issue(("search", "where"), "matches no cell: nothing would be "
                                      "searched (check the values against the grid)",
                                      study.search.where)], source.file)
    found: dict[str, tuple[Issue, list[GridPoint]]] = {}
    for point in chosen:
        for path, segments in space.items():
            for value in representative_values(study.search.space[path]):
                trial = copy.deepcopy(point.trial)
                try:
                    set_path(trial, segments, value)
                    trial = TrialConfig.model_validate(trial).model_dump(mode="json")
                    problems = [m for p, _, m in trial_problems(trial) if _matches(segments, p)
                                or _matches(p, segments)]
                except KeyError as e:
                    problems = [f"cannot be set: {e.args[0]}"]
                except ValidationError as err:
                    problems = [f"{join_path(e['loc'])}: {e['msg']}" for e in err.errors(include_url=False)]
                for message in problems:
                    issue = source.issue(("search", "space", path),
                                         f"the value {show_value(value)} it can take is invalid: {message}",
                                         study.search.space[path])
                    found.setdefault(issue.format(source.file), (issue, []))[1].append(point)
    if found:
        raise SpecError([_with_cells(i, c, len(chosen)) for i, c in found.values()], source.file)


# --------------------------------------------------------------------------------------------
# Loading.
# --------------------------------------------------------------------------------------------

def parse_study(text: str, file: str = "<study>", overrides: Sequence[str] = (),
                flags: Sequence[tuple[str, Any, str]] = ()) -> Study:
    """Validate study YAML ``text`` (as if read from ``file``) with ``--set`` ``overrides``
    ('path=value') and ``flags`` ((study path, value, flag text) from other CLI options)."""
    data, lines = _compose(text, file)
    source = Source(file=file, lines=lines)
    if data is None:
        data = {}
        if not overrides and not flags:
            raise SpecError([Issue("", "the study file is empty; it needs at least 'name'")], file)
    if not isinstance(data, dict):
        raise SpecError([source.issue((), "a study is a mapping of fields (name: ..., dataset: ...)",
                                      data)], file)
    for text_ in overrides:
        flag = f"--set {text_}"
        try:
            path, value = parse_override(text_)
        except ValueError as e:
            raise SpecError([Issue("", str(e), origin=flag)], file) from None
        _apply_override(data, path, value, flag, source)
    for path, value, flag in flags:
        _apply_override(data, path, value, flag, source)
    try:
        study = Study.model_validate(data)
    except ValidationError as err:
        raise SpecError(pydantic_issues(err, Study, source), file) from None
    study._source = source
    check_study_size(study, source)
    _check_search(study, expand_grid(study))
    _check_published(study)
    return study


def _check_published(study: Study) -> None:
    """Every published entry names a method and grid values some cell has."""
    source = study.source or Source(file="<study>")
    issues: list[Issue] = []
    for i, entry in enumerate(study.published):
        methods = set(study.grid.get("method.name", [study.method.name]))
        if entry.method not in methods:
            issues.append(source.issue(("published", i, "method"), "no cell runs this method (cells run "
                                       f"{', '.join(map(str, sorted(methods)))})", entry.method))
        for axis, value in entry.where.items():
            if axis not in study.grid or value not in study.grid[axis]:
                issues.append(source.issue(("published", i, "where", axis), "must be a grid axis and one of "
                                           "its values, so that the number has cells to stand beside", value))
    if issues:
        raise SpecError(issues, source.file)


def load_study(path: str | Path, overrides: Sequence[str] = (),
               flags: Sequence[tuple[str, Any, str]] = ()) -> Study:
    """Read and fully validate the study file ``path`` (see ``parse_study``)."""
    file = str(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_STUDY_BYTES + 1)
    except FileNotFoundError:
        raise SpecError([Issue("", "no such study file (give a path such as studies/smoke.yaml)")],
                        file) from None
    except OSError as e:
        raise SpecError([Issue("", f"cannot read the study file: {e}")], file) from None
    if len(raw) > MAX_STUDY_BYTES:
        raise SpecError([Issue("", f"the file is larger than {MAX_STUDY_BYTES:,} bytes "
                                   "(MAX_STUDY_BYTES); a study file is a short YAML document")],
                        file)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise SpecError([Issue("", f"not UTF-8 text: byte 0x{raw[e.start]:02x} at column {column} "
                                   "cannot be decoded; save the file as UTF-8", line=line)],
                        file) from None
    return parse_study(text, file, overrides, flags)


__all__ = ["AshaSpec", "DISTRIBUTIONS", "MAX_LIST_ITEMS", "MAX_STUDY_BYTES", "MAX_STUDY_TRIALS",
           "MAX_YAML_ALIASES", "MAX_YAML_NODES", "check_study_size", "Distribution", "FifoSpec", "GRID_ROOTS", "GridPoint",
           "Published", "Resources", "SEARCH_ROOTS", "SchedulerSpec", "SearchSpec", "Source", "Study",
           "TrialSections", "cell_ids", "cell_label", "check_distribution", "expand_grid",
           "get_path", "join_path", "load_study", "method_kind", "parse_override", "parse_study",
           "representative_values", "resolve_path", "searched", "set_path", "split_path",
           "trial_config", "trial_problems"]
