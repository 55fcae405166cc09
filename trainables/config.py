"""The validated configuration of one trial (see docs/ARCHITECTURE.md, section 1).

A trial receives a plain dict; ``TrialConfig.model_validate(d)`` turns it into these models.
The study spec (``platform.spec``) reuses the same models so that every field here can be set in
a study file and swept by a grid axis.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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
    prior_seed: int | None = Field(None, description="seed of the 'shuffled' class permutation; "
                                                     "None = seed (set it to share head classes across seeds)")


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
    val_per_class: int = Field(20, ge=1, description="balanced validation images per class")
    split_seed: int = Field(0, description="seed of the long-tailed subset and validation split")
    group_reference_ir: float | None = Field(
        None, ge=1.0, description="fix D-groups from the class counts of this imbalance ratio "
                                  "(LIFT's CIFAR practice); None = from the actual training counts")
    world: ToyWorldConfig = Field(default_factory=ToyWorldConfig, description="toy_lt only")
    train_split: str | None = Field(None, description="txt formats: file of 'path label' lines")
    val_split: str | None = None
    test_split: str | None = None
    classnames: str | None = Field(None, description="txt formats: file with one class name per line")
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
    num_workers: int = Field(0, ge=0)
    max_steps_per_epoch: int | None = Field(None, ge=1, description="cap steps (benchmarks, smoke runs)")


class MethodConfig(_Strict):
    """A long-tail method: a training loss, a two-phase recipe, or a post-hoc correction."""

    name: str = Field("la", description="ce, focal, cb, ldam_drw, bs, la, gla_train, crt, "
                                        "posthoc_la, gla, backdoor")
    tau: float = Field(1.0, description="logit-adjustment temperature (la, posthoc_la, gla, gla_train)")
    gamma: float = Field(1.0, ge=0, description="focal loss exponent")
    beta: float = Field(0.9999, ge=0, lt=1, description="class-balanced effective-number beta")
    ldam_max_margin: float = Field(0.5, gt=0)
    ldam_scale: float = Field(30.0, gt=0)
    drw_epoch_frac: float = Field(0.8, ge=0, le=1, description="LDAM-DRW: re-weighting starts here")
    crt_epochs: int = Field(5, ge=1, description="cRT: epochs of class-balanced head retraining")
    base_method: str = Field("ce", description="post-hoc methods: the training method whose logits they correct")


class BackdoorConfig(_Strict):
    """The backdoor adjustment over confounder strata (foundation models)."""

    confounders: int = Field(3, ge=1, description="M, the number of strata")
    strata: list[int] | None = Field(None, description="pool indices; None = the first M")
    weighting: Literal["uniform", "searched", "fitted", "bias_conditional"] = "uniform"
    weights: list[float] | None = Field(None, description="'searched': raw non-negative weights per pool member")
    aggregation: Literal["logit", "prob", "logprob"] = "logit"
    debias: Literal["none", "la", "gla"] = "none"
    stratum_method: MethodConfig = Field(default_factory=lambda: MethodConfig(name="la"))
    strata_source: Literal["pool", "seeds"] = Field(
        "pool", description="pool: different backbones; seeds: seeds of pool[0] (ensembling control)")
    bias_temperature: float = Field(1.0, gt=0, description="bias_conditional: sharpness of the weights")


class RuntimeConfig(_Strict):
    """Where a trial reads and writes; never changes what a trial computes."""

    cache_dir: str = "outputs/cache"
    zoo_dir: str = "outputs/zoo"
    data_root: str | None = None
    artifacts: bool = True
    num_threads: int | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    fault: str | None = Field(None, description="testing only: nan_at_epoch:N or crash_at_epoch:N")


class TrialConfig(_Strict):
    """Everything one trial needs."""

    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    pool: list[BackboneConfig] = Field(default_factory=list)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    backdoor: BackdoorConfig = Field(default_factory=BackdoorConfig)
    seed: int = 0
    seeds: list[int] = Field(default_factory=lambda: [0])
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
