"""The study spec's pydantic models: ``Study`` (a YAML file's fields, composed of the trial-config
models of ``trainables.config``) and its sections (``SearchSpec``, ``SchedulerSpec``,
``Published``, ``Resources``, ``TrialSections``).

Loading and checking a study file lives in ``platform.studyfile`` (``load_study``); paths in
``platform.dotpath``; error placement in ``platform.yamlsource``; per-trial checks in
``platform.checks``; grid expansion and the search checks in ``platform.grid``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, PlainValidator, PrivateAttr, WithJsonSchema,
                      field_validator, model_validator)

from platform import paths
from platform.space import check_distribution
from platform.space import JSON_SCHEMA as SPACE_SCHEMA
from platform.yamlsource import Source
from trainables.config import (AnyMethod, BackboneConfig, BackdoorConfig, DatasetConfig, FinetuneConfig,
                               Replicate, RuntimeConfig, SeedAxes, seed_axes, method_config)


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
    method: AnyMethod = Field(default_factory=method_config)
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

    def identity(self) -> dict:
        """What the study's identity is made of: the resolved spec (every default filled in, as
        this version of the code resolves it) without where/how fast it runs (storage,
        tracking_uri, max_concurrent) and the published numbers it is compared with, so a study
        moved to a cluster keeps its identity."""
        return self.model_dump(mode="json", exclude=set(_LOCATION_FIELDS) | {"published"})

    def spec_hash(self) -> str:
        """sha256 of :meth:`identity` as JSON. Being of the *resolved* spec, it changes when the
        study file changes and also when the code resolves the same file differently (a new
        default, fields moved between sections)."""
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()

    def to_yaml(self) -> str:
        """The resolved spec as YAML (every default filled in): what MLflow logs."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


__all__ = ["AshaSpec", "Distribution", "FifoSpec", "GRID_ROOTS", "Published", "Resources",
           "SEARCH_ROOTS", "SchedulerSpec", "SearchSpec", "Study", "TrialSections"]
