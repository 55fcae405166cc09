"""Which stage a trial is, and which stage-1 fine-tunes a stage-2 trial reads.

Stage 1 fine-tunes one backbone with a training method (its logits go to the stage-1 cache).
Stage 2 (post-hoc corrections and the backdoor adjustment) only reads cached stage-1 logits, so
the platform schedules the stage-1 prerequisites first and the stage-2 trials stay cheap.
Prerequisites are computed per replicate (``trainables.config.apply_replicate``).
"""

from __future__ import annotations

from trainables.config import MethodConfig, TrialConfig, apply_replicate, method_config
from trainables.methods import get_method
from trainables.methods.backdoor import baseline_plan, strata_plan

__all__ = ["apply_replicate", "method_kind", "prerequisites", "stage1_config"]


def method_kind(method_name: str) -> str:
    """'train', 'posthoc' or 'ensemble'."""
    return get_method(method_name).kind


def stage1_config(cfg: TrialConfig, backbone, method: MethodConfig, seed: int) -> TrialConfig:
    """The stage-1 trial that fine-tunes ``backbone`` with ``method`` and ``seed`` on cfg's data."""
    return cfg.model_copy(update={"backbone": backbone, "method": method, "seed": seed, "pool": []}, deep=True)


def prerequisites(config: dict) -> list[dict]:
    """Stage-1 trial configs (dicts) that a trial needs before it can run, per replicate; [] for stage 1.

    A backdoor trial may search its strata, so it needs every pool member (or, for the seeds
    control, as many seeds of its own backbone as the pool has members), and the fine-tunes of
    its single-model baselines on every pool member.
    """
    cfg = TrialConfig.model_validate(config)
    kind = method_kind(cfg.method.name)
    out: list[TrialConfig] = []
    for rep in cfg.replicates:
        rc = apply_replicate(cfg, rep)
        if kind == "posthoc":
            base = method_config(name=rc.method.base_method)
            out.append(stage1_config(rc, rc.backbone, base, rc.seed))
        elif kind == "ensemble":
            bd = rc.backdoor
            m = max(len(rc.pool), bd.confounders) if bd.strata_source == "seeds" else max(len(rc.pool), 1)
            widest = rc.model_copy(update={"backdoor": bd.model_copy(update={"confounders": m, "strata": None})})
            for backbone, stratum_seed in strata_plan(widest, rc.seed):
                out.append(stage1_config(rc, backbone, bd.stratum_method, stratum_seed))
            for _, backbone, train_method, _ in baseline_plan(rc):
                out.append(stage1_config(rc, backbone, train_method, rc.seed))
    unique = {c.model_dump_json(): c for c in out}
    return [c.model_dump(mode="json") for c in unique.values()]
