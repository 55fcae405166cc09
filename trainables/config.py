"""The validated configuration of one trial (see docs/ARCHITECTURE.md, section 1).

A trial receives a plain dict; ``TrialConfig.model_validate(d)`` turns it into these models.
The study spec (``platform.spec``) reuses the same models so that every field here can be set in
a study file and swept by a grid axis.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, GetJsonSchemaHandler, PlainValidator, SerializeAsAny,
                      ValidationError, field_validator, model_validator)
from pydantic_core import PydanticCustomError

from trainables.registry import unknown_name_message

#: The backbone families: name -> the module that registers its builder in
#: ``trainables.backbones.BACKBONES`` (imported on first use). The one list of family names.
BACKBONE_FAMILIES = {
    "toy": "trainables.backbones.toy",
    "open_clip": "trainables.backbones.open_clip_backbone",
    "timm": "trainables.backbones.timm_backbone",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ToyWorldConfig(_Strict):
    """The procedurally generated image world (``trainables/world``)."""

    num_classes: int = Field(20, ge=3, le=200, description="classes in the world")
    image_size: int = Field(32, ge=16, le=64)
    num_parts: int = Field(4, ge=2, le=8, description="parts each class is composed of")
    seed: int = Field(0, description="seed of the world's class definitions")
    n_max: int = Field(300, ge=10, description="training images of the largest downstream class")
    test_per_class: int = Field(50, ge=5)
    part_vocab: int | None = Field(None, ge=2, le=64, description="vocabulary values per part region; "
                                   "None = enough that a half view confuses about two classes each")
    jitter: float = Field(0.25, ge=0, le=0.5, description="part position jitter, fraction of its region")
    colour_noise: float = Field(0.12, ge=0, le=0.5, description="per-instance colour perturbation")
    clutter: int = Field(3, ge=0, le=16, description="label-free distractor rectangles per image")
    noise: float = Field(0.06, ge=0, le=0.5, description="std of Gaussian pixel noise (pixels in [0, 1])")


class ToyPretrainConfig(_Strict):
    """Knobs of a toy foundation model's pre-training (the controlled parameter imbalance)."""

    imbalance_ratio: float = Field(10.0, ge=1.0, description="pre-training label prior's max/min")
    alignment: Literal["aligned", "reversed", "shuffled"] = Field(
        "shuffled", description="how pre-training head classes line up with downstream head classes")
    view: str = Field("all", description="which parts the model may see: all, top, bottom, left, "
                                         "right, or a '+'-joined list of part indices such as 0+2")
    seed: int = 0
    corpus_size: int = Field(6000, ge=100, description="images in the pre-training corpus")
    epochs: int = Field(6, ge=1)
    width: int = Field(64, ge=16, description="ViT embedding dimension")
    depth: int = Field(4, ge=1)
    patch_size: int = Field(8, ge=2, description="ViT patch size (must divide world.image_size)")
    heads: int = Field(4, ge=1, description="ViT attention heads (must divide width)")
    mlp_ratio: float = Field(2.0, gt=0, description="ViT MLP hidden size / width")
    lr: float = Field(2e-3, gt=0, description="AdamW peak learning rate (warm-up + cosine)")
    prior_seed: int | None = Field(None, description="seed of this member's own class ranking ('shuffled', "
                                   "or the independent part of prior_agreement); None = seed. A value "
                                   "equal to seed is stored as None, so equal models share a zoo entry")
    prior_agreement: float | None = Field(
        None, ge=-1.0, le=1.0, description="Gaussian-copula correlation of this member's class ranking "
        "with the reference ranking (the one 'alignment' gives with prior seed 0): 1 = the reference "
        "prior, 0 = independent, -1 = reversed; None = use 'alignment' and prior_seed alone")

    @model_validator(mode="before")
    @classmethod
    def _canonical_prior_seed(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("prior_seed") is not None \
                and data.get("prior_seed") == data.get("seed", 0):
            data = {**data, "prior_seed": None}
        return data

    def effective_prior_seed(self) -> int:
        """The seed of this member's own class ranking (prior_seed, or seed when None)."""
        return self.seed if self.prior_seed is None else self.prior_seed


class BackboneConfig(_Strict):
    """A foundation model: open_clip, timm, or a toy model from the controlled world."""

    family: str = Field("toy", description="backbone family (BACKBONE_FAMILIES)",
                        json_schema_extra={"enum": list(BACKBONE_FAMILIES)})
    name: str = Field("toy-vit", description="model name in its family (e.g. ViT-B-16, vit_base_patch16_224)")
    pretrained: str | None = Field(None, description="open_clip pretrained tag, or 'true' for timm hub weights")
    checkpoint: str | None = Field(None, description="local checkpoint file (open_clip or timm format)")
    label: str | None = Field(None, description="display name in reports")
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="extra keyword arguments of the family's model factory "
        "(timm.create_model, e.g. {img_size: 32}; open_clip.create_model, e.g. {vision_cfg: {...}})")
    pretrain: ToyPretrainConfig | None = Field(None, description="toy family only")

    @field_validator("family")
    @classmethod
    def _known_family(cls, family: str) -> str:
        if family not in BACKBONE_FAMILIES:
            raise ValueError(unknown_name_message("backbone family", family, list(BACKBONE_FAMILIES)))
        return family

    @model_validator(mode="after")
    def _family_fields(self) -> "BackboneConfig":
        if self.family == "toy" and self.pretrain is None:
            self.pretrain = ToyPretrainConfig()
        if self.family != "toy" and self.pretrain is not None:
            raise ValueError(f"'pretrain' is only for family 'toy', not {self.family!r}; remove it")
        return self

    def display(self) -> str:
        """A short human-readable name."""
        if self.label:
            return self.label
        if self.family == "toy" and self.pretrain is not None:
            p = self.pretrain
            return f"toy[{p.view},ir{p.imbalance_ratio:g},{p.alignment},s{p.seed}]"
        return f"{self.family}:{self.name}" + (f"@{self.pretrained}" if self.pretrained else "")


class DatasetConfig(_Strict):
    """A downstream long-tailed data set."""

    name: str = Field("toy_lt", description="registry key: toy_lt, cifar10_lt, cifar100_lt, "
                                           "imagenet_lt, places_lt, inat2018, txt_split")
    root: str | None = Field(None, description="data folder; default from $LTBIAS_DATA/<name>")
    imbalance_ratio: float = Field(100.0, ge=1.0, description="n_max / n_min of the training split")
    profile: Literal["exp", "step"] = "exp"
    num_classes: int | None = Field(None, ge=2)
    val_per_class: int = Field(20, ge=0, description="validation images per class (CIFAR: at most the "
                               "training images the long-tailed split leaves unused, none for its head class)")
    split_seed: int = Field(0, description="seed of the long-tailed subset and validation split")
    group_reference_ir: float | None = Field(
        None, ge=1.0, description="fix D-groups from the class counts of this imbalance ratio "
                                  "(LIFT's CIFAR practice); None = from the actual training counts")
    world: ToyWorldConfig = Field(default_factory=ToyWorldConfig, description="toy_lt only")
    train_split: str | None = Field(None, description="txt formats: file of 'path label' lines")
    val_split: str | None = None
    test_split: str | None = None
    classnames: str | None = Field(
        None, description="split-file data sets: class-name file (one name per line, LIFT's '<id> <name>' "
                          "lines or iNaturalist's categories.json); None = the list shipped for "
                          "imagenet_lt / places_lt / inat2018, placeholders class_<i> otherwise")
    limit_per_class: int | None = Field(None, ge=1, description="cap images per class (smoke runs)")


class FinetuneConfig(_Strict):
    """The fine-tuning recipe (LIFT's defaults)."""

    peft: Literal["linear", "full", "bitfit", "lora", "adaptformer"] = "adaptformer"
    head: Literal["linear", "cosine", "text"] = "cosine"
    epochs: int = Field(10, ge=0)
    lr: float = Field(0.01, gt=0)
    batch_size: int = Field(128, ge=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    warmup_epochs: float = Field(0.0, ge=0)
    amp: Literal["none", "bf16", "fp16"] = "none"
    grad_accum: int = Field(1, ge=1)
    adapter_dim: int | None = Field(None, ge=1, description="AdaptFormer bottleneck; None = C/24 as a power of two")
    lora_rank: int = Field(4, ge=1)
    cosine_scale: float = Field(25.0, gt=0)
    prompt_templates: list[str] = Field(default_factory=lambda: ["a photo of a {}."])
    cache_features: bool = Field(True, description="frozen-backbone methods train on cached features")
    augment: bool = True
    eval_transform: Literal["center", "lift"] = Field(
        "center", description="val/test images: center = Resize(res) + CenterCrop(res); lift = LIFT's "
                              "Resize(res * 8 // 7) + CenterCrop(res)")
    test_crops: Literal[1, 5, 10] = Field(
        1, description="test-time crops whose logits are averaged (LIFT's test-time ensembling, the paper's "
                       "test): 5 = FiveCrop, 10 = TenCrop of the image resized to res + crop_expand; test only")
    crop_expand: int = Field(24, ge=0, description="test_crops > 1: pixels added to res before cropping "
                                                   "(LIFT's 'expand', 24 for ViT-B/16)")
    num_workers: int = Field(0, ge=0)
    max_steps_per_epoch: int | None = Field(None, ge=1, description="cap steps (benchmarks, smoke runs)")


class MethodConfig(_Strict):
    """The base of every method's config: ``name`` plus the fields that method reads.

    Each method declares its own subclass (``name: Literal["<its name>"]`` and its hyper-parameters)
    in its own module and registers it with its ``Method`` (``trainables.methods``). Fields typed
    ``AnyMethod`` are validated against the config of the method ``name`` names (a union tagged by
    ``name``, resolved in the method registry when a value is validated, so a method registered later,
    e.g. by a test, is part of it).
    """

    name: str = Field(description="a registered method (trainables.methods.METHODS)")


DEFAULT_METHOD = "la"


def _method_error(name: str, err: ValidationError, cls: type[MethodConfig]) -> ValidationError:
    """``err`` with an unknown field reworded to name the method and the fields it accepts."""
    fields = ", ".join(cls.model_fields)
    lines = []
    for e in err.errors(include_url=False):
        if e["type"] == "extra_forbidden":
            field = e["loc"][-1]
            lines.append({"type": PydanticCustomError(
                "method_field", "method '{method}' has no field '{field}' (its fields: {fields}); remove "
                "it, or use a method that reads it", {"method": name, "field": field, "fields": fields}),
                "loc": e["loc"], "input": e["input"]})
        else:
            lines.append({"type": PydanticCustomError(e["type"], e["msg"], e.get("ctx")), "loc": e["loc"],
                          "input": e["input"]})
    return ValidationError.from_exception_data(cls.__name__, lines)


def method_config(value: Any = None, **fields: Any) -> MethodConfig:
    """The config of the method ``value["name"]`` (or ``fields["name"]``), validated by that method's
    own model; a missing name is ``DEFAULT_METHOD``. ValueError for an unknown name (did-you-mean)."""
    if isinstance(value, MethodConfig):
        if type(value) is not MethodConfig and not fields:
            return value
        value = value.model_dump()
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ValueError(f"a method is a mapping with a 'name' (e.g. {{name: la}}), not {value!r}")
    value = {**value, **fields}
    from trainables.methods import METHODS  # the registry imports the method modules (and torch)
    name = value.get("name", DEFAULT_METHOD)
    if name not in METHODS:  # an error at ``name`` (e.g. method.name), with the registry's did-you-mean
        raise ValidationError.from_exception_data("MethodConfig", [{
            "type": PydanticCustomError("unknown_method", "{message}",
                                        {"message": unknown_name_message("method", str(name), METHODS.names())}),
            "loc": ("name",), "input": name}])
    cls = METHODS.get(name).config
    try:
        return cls.model_validate({**value, "name": name})
    except ValidationError as err:
        raise _method_error(name, err, cls) from None


class _MethodUnionSchema:
    """The JSON schema of ``AnyMethod``: one of the registered methods' configs, tagged by ``name``."""

    def __get_pydantic_json_schema__(self, _core: Any, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        from trainables.methods import METHODS
        refs = {name: handler(method.config.__pydantic_core_schema__) for name, method in METHODS.items()}
        return {"anyOf": list(refs.values()), "description": "a method's config: its name (default "
                f"{DEFAULT_METHOD!r}) and only the fields that method has"}


#: A method config: validated as the config of the method its ``name`` names (see ``MethodConfig``).
AnyMethod = Annotated[SerializeAsAny[MethodConfig], PlainValidator(method_config), _MethodUnionSchema()]


class BackdoorConfig(_Strict):
    """The backdoor adjustment over confounder strata (foundation models)."""

    confounders: int = Field(3, ge=1, description="M, the number of strata")
    strata: list[int] | None = Field(None, description="pool indices; None = the first M")
    weighting: str = Field("uniform", description="a rule registered in trainables.methods.weighting."
                                                   "WEIGHTINGS, the one list of their names (an unknown "
                                                   "name is refused with the list)")
    weights: list[float] | None = Field(None, description="'searched': raw non-negative weights per pool member")
    aggregation: Literal["logit", "prob", "logprob"] = "logit"
    debias: Literal["none", "la", "prior"] = "none"
    stratum_method: AnyMethod = Field(default_factory=lambda: method_config(name="la"))
    strata_source: Literal["pool", "seeds"] = Field(
        "pool", description="pool: different backbones; seeds: seeds of pool[0] (ensembling control)")
    reliability_shrinkage: float = Field(
        0.5, ge=0, le=1, description="reliability: weight of uniform in the class-conditional weights "
                                     "(0 = per-class validation F1 alone, 1 = uniform)")
    baselines: list[AnyMethod] = Field(
        default_factory=lambda: [method_config(name="ce"), method_config(name="la"),
                                 method_config(name="gla", base_method="ce")],
        description="single-model methods run on every pool member; each backdoor trial is compared "
                    "with the best of them (chosen on validation) and with their mean")


class RuntimeConfig(_Strict):
    """Where a trial reads and writes; never changes what a trial computes."""

    cache_dir: str = "outputs/cache"
    zoo_dir: str = "outputs/zoo"
    data_root: str | None = None
    artifacts: bool = True
    num_threads: int | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    fault: str | None = Field(None, description="testing only: nan_at_epoch:N or crash_at_epoch:N")


PRETRAIN_SEED_STRIDE = 1000
"""Replicate r's pre-training seed of a toy member is member seed + PRETRAIN_SEED_STRIDE * r."""


class Replicate(_Strict):
    """One independent repeat: which world, which pre-training run, which fine-tuning run.

    ``world`` sets ``dataset.world.seed`` (which images, which classes share parts); ``pretrain``
    shifts every toy backbone's pre-training seed (its own prior stays); ``finetune`` is the
    stage-1 training seed. See ``trainables.stages.apply_replicate``.
    """

    world: int = 0
    pretrain: int = 0
    finetune: int = 0

    def label(self) -> str:
        """'w0-p1-f0': the MLflow tag ``ltbias.replicate``."""
        return f"w{self.world}-p{self.pretrain}-f{self.finetune}"


class SeedAxes(_Strict):
    """The three seed axes of a study; its replicates are their cross product."""

    world: list[int] = Field(default_factory=lambda: [0], min_length=1, description="world seeds")
    pretrain: list[int] = Field(default_factory=lambda: [0], min_length=1,
                                description="pre-training replicates (0 = each member's own seed)")
    finetune: list[int] = Field(default_factory=lambda: [0], min_length=1, description="fine-tuning seeds")

    @field_validator("world", "pretrain", "finetune")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        dup = [s for i, s in enumerate(v) if s in v[:i]]
        if dup:
            raise ValueError(f"seed {dup[0]} is listed twice; seeds must be distinct")
        return v

    def replicates(self) -> list[Replicate]:
        """Every (world, pretrain, finetune) combination, world slowest."""
        return [Replicate(world=w, pretrain=p, finetune=f)
                for w in self.world for p in self.pretrain for f in self.finetune]


def seed_axes(seeds: "list[int] | SeedAxes | dict") -> SeedAxes:
    """A study's ``seeds`` (a list = fine-tuning seeds, or the three axes) as SeedAxes."""
    if isinstance(seeds, SeedAxes):
        return seeds
    if isinstance(seeds, dict):
        return SeedAxes.model_validate(seeds)
    return SeedAxes(finetune=list(seeds))


class TrialConfig(_Strict):
    """Everything one trial needs."""

    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    pool: list[BackboneConfig] = Field(default_factory=list)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    method: AnyMethod = Field(default_factory=method_config)
    backdoor: BackdoorConfig = Field(default_factory=BackdoorConfig)
    seed: int = Field(0, description="the seed of a stage-1 fine-tune")
    replicates: list[Replicate] = Field(
        default_factory=lambda: [Replicate()], min_length=1,
        description="stage-2 trials evaluate every replicate and report mean and sample s.d.")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)


def apply_replicate(cfg: TrialConfig, rep: Replicate) -> TrialConfig:
    """``cfg`` as replicate ``rep`` runs it (``cfg`` holds the study's base seeds).

    - ``dataset.world.seed = rep.world``;
    - every toy backbone (``backbone`` and each ``pool`` member) keeps its own class ranking (its
      prior seed is pinned to the base one) and pre-trains with seed
      ``member seed + PRETRAIN_SEED_STRIDE * rep.pretrain``;
    - ``seed = rep.finetune``; ``replicates = [rep]``.
    """
    def member(bb: BackboneConfig) -> BackboneConfig:
        if bb.pretrain is None:
            return bb
        pre = bb.pretrain.model_dump()
        pre.update(prior_seed=bb.pretrain.effective_prior_seed(),
                   seed=bb.pretrain.seed + PRETRAIN_SEED_STRIDE * rep.pretrain)
        return bb.model_copy(update={"pretrain": ToyPretrainConfig.model_validate(pre)})

    world = cfg.dataset.world.model_copy(update={"seed": rep.world})
    return cfg.model_copy(update={
        "dataset": cfg.dataset.model_copy(update={"world": world}),
        "backbone": member(cfg.backbone), "pool": [member(b) for b in cfg.pool],
        "seed": rep.finetune, "replicates": [rep]})
