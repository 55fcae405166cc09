"""Which stage a trial is, and which stage-1 fine-tunes a stage-2 trial reads.

Stage 1 fine-tunes one backbone with a training method (its logits go to the stage-1 cache).
Stage 2 (post-hoc corrections and the backdoor adjustment) only reads cached stage-1 logits, so
the platform schedules the stage-1 prerequisites first and the stage-2 trials stay cheap.
"""

from __future__ import annotations

from trainables.config import MethodConfig, TrialConfig
from trainables.methods import get_method
from trainables.methods.backdoor import strata_plan


def method_kind(method_name: str) -> str:
    """'train', 'posthoc' or 'ensemble'."""
    return get_method(method_name).kind


def stage1_config(cfg: TrialConfig, backbone, method: MethodConfig, seed: int) -> TrialConfig:
    """The stage-1 trial that fine-tunes ``backbone`` with ``method`` and ``seed`` on cfg's data."""
    return cfg.model_copy(update={"backbone": backbone, "method": method, "seed": seed,
                                  "seeds": [seed], "pool": []}, deep=True)


def prerequisites(config: dict) -> list[dict]:
    """Stage-1 trial configs (dicts) that a trial needs before it can run; [] for stage 1.

    A backdoor trial may search its strata, so it needs every pool member (or, for the seeds
    control, as many seeds of its own backbone as the pool has members).
    """
    cfg = TrialConfig.model_validate(config)
    kind = method_kind(cfg.method.name)
    out: list[TrialConfig] = []
    if kind == "posthoc":
        base = cfg.method.model_copy(update={"name": cfg.method.base_method})
        out = [stage1_config(cfg, cfg.backbone, base, s) for s in cfg.seeds]
    elif kind == "ensemble":
        bd = cfg.backdoor
        m = max(len(cfg.pool), bd.confounders) if bd.strata_source == "seeds" else max(len(cfg.pool), 1)
        widest = cfg.model_copy(update={"backdoor": bd.model_copy(update={"confounders": m, "strata": None})})
        for s in cfg.seeds:
            for backbone, stratum_seed in strata_plan(widest, s):
                out.append(stage1_config(cfg, backbone, bd.stratum_method, stratum_seed))
    return [c.model_dump(mode="json") for c in out]
