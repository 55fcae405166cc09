"""The backdoor adjustment: P(Y | do(X)) = sum_c P(Y | X, c) P(c) over confounder strata.

Each stratum c is one foundation model (an "incomplete semantic factor"), fine-tuned on its own
as a stage-1 trial. The adjusted score is ``sum_c w_c * f_c(x)`` where ``f_c`` is the stratum's
(optionally debiased) output in logit, probability or log-probability space and ``w`` comes from
a registered weighting rule (``trainables.methods.weighting``: uniform, searched, fitted,
reliability). Only validation logits and labels are used to fit or select anything; test logits are
scored once with the weights the validation split chose.

The comparison that answers the paper's claim (``run_backdoor``): every trial also scores the
single-model baselines (``backdoor.baselines``, e.g. ce / la / gla) on *every* pool member, per
replicate, and reports

- ``baseline/best_single/<metric>``: test metrics of the single model (member x baseline method)
  with the best validation accuracy in this replicate (chosen on validation, within the cell);
- ``baseline/mean_single/<metric>``: the mean test metric over all those single models;
- ``gain/test/<metric>`` = backdoor - best single, paired over replicates (``trainables.stats.
  paired_interval``: Student-t over replicates with >= 3 replicates, else a paired bootstrap over
  test images for ``acc``), with ``_lo`` / ``_hi`` (95 % interval) and ``_std`` (sample s.d. of
  the per-replicate differences);
- ``backdoor/M`` (strata used), ``backdoor/w<i>`` (mean weight of stratum i), ``pool/prior_spearman``
  (mean pairwise Spearman correlation of the strata's true pre-training priors; 1 = same prior).
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Callable

import numpy as np

from trainables.config import BackboneConfig, MethodConfig, TrialConfig, apply_replicate, method_config
from trainables.methods import Method, get_method, log_prior, log_train_prior, register
from trainables.methods.weighting import (WeightingInput, accuracy, aggregate, log_softmax,  # noqa: F401
                                          normalise_weights, uniform_weights, weights_for)
from trainables.stats import paired_interval, summarize, summarize_metrics

GAIN_METRICS = ("acc", "bal_acc", "p_few", "p_true_few")
"""Test metrics whose backdoor - best-single difference is reported as ``gain/test/<metric>``."""
BASELINE_METRICS = ("acc", "bal_acc", "p_many", "p_medium", "p_few", "p_true_many", "p_true_medium",
                    "p_true_few")


def debias(logits: np.ndarray, mode: str, train_counts: np.ndarray, q_hat: np.ndarray | None,
           tau: float = 1.0) -> np.ndarray:
    """Post-hoc debias of one stratum: none; la: z - tau*log p_s; prior: z - tau*log p_s - log q_hat
    (the rule of the ``posthoc_prior`` method; GLA's inference also adds the zero-shot logits, see ``gla``)."""
    z = np.asarray(logits, dtype=np.float64)
    if mode == "none":
        return z
    z = z - tau * log_train_prior(train_counts).double().numpy()
    if mode == "la":
        return z
    if mode == "prior":
        if q_hat is None:
            raise ValueError("backdoor.debias = 'prior' needs an estimated pre-training prior, but this "
                             "stratum's backbone has no zero-shot classifier; use debias: la")
        return z - log_prior(q_hat).double().numpy()
    raise ValueError(f"unknown backdoor.debias {mode!r}; expected none, la or prior")


# Training losses whose logits already have the downstream prior removed (gla_train also the
# pre-training prior): a post-hoc la / gla on top would subtract log p_s a second time.
_TRAIN_PRIOR_REMOVED = {"la", "bs", "gla_train"}


def check_not_double_corrected(debias_mode: str, trained_with: str, field: str, method_field: str) -> None:
    """ValueError when a post-hoc correction would subtract a prior the training loss already removed."""
    if debias_mode in ("la", "prior", "posthoc_la", "posthoc_prior", "gla") and trained_with in _TRAIN_PRIOR_REMOVED:
        raise ValueError(f"{field} = {debias_mode!r} on logits trained with {trained_with!r} subtracts "
                         f"log p_s twice ({trained_with} already adjusts for the training prior); "
                         f"set {method_field} to ce (or another unadjusted loss), or drop the post-hoc step")


def strata_plan(cfg, seed: int) -> list[tuple[object, int]]:
    """The (backbone config, stage-1 seed) of every stratum a backdoor trial combines.

    ``strata_source: pool`` takes pool members (``backdoor.strata`` or the first M);
    ``strata_source: seeds`` takes M seeds of the trial's own backbone (the reviewers' control:
    is the gain only ensembling?). Stratum k of the seeds control uses seed ``seed + 1000 * k``.
    """
    bd = cfg.backdoor
    if bd.strata_source == "seeds":
        return [(cfg.backbone, seed + 1000 * k) for k in range(bd.confounders)]
    pool = cfg.pool or [cfg.backbone]
    if bd.strata is not None:
        bad = [i for i in bd.strata if not 0 <= i < len(pool)]
        if bad or not bd.strata:
            raise ValueError(f"backdoor.strata = {bd.strata}: indices must be in 0..{len(pool) - 1} "
                             "(positions in the study's backbones pool) and not empty")
        idx = list(dict.fromkeys(bd.strata))
    else:
        if bd.confounders > len(pool):
            raise ValueError(f"backdoor.confounders = {bd.confounders} but the pool has {len(pool)} "
                             "backbones; lower confounders or add backbones")
        idx = list(range(bd.confounders))
    return [(pool[i], seed) for i in idx]


def baseline_plan(cfg: TrialConfig) -> list[tuple[int, BackboneConfig, MethodConfig, MethodConfig]]:
    """(pool index, backbone, stage-1 training method, baseline method) of every single model.

    A training baseline (ce, la, ...) is its own stage-1 fine-tune; a post-hoc one (gla,
    posthoc_la) corrects the stage-1 fine-tune of its ``base_method``.
    """
    pool = cfg.pool or [cfg.backbone]
    out = []
    for i, bb in enumerate(pool):
        for m in cfg.backdoor.baselines:
            kind = get_method(m.name).kind
            if kind == "ensemble":
                raise ValueError(f"backdoor.baselines: {m.name!r} is not a single-model method; use "
                                 "training (ce, la, ...) or post-hoc (gla, posthoc_la) methods")
            train = m if kind == "train" else method_config(name=m.base_method)
            out.append((i, bb, train, m))
    return out


def single_outputs(r, method: MethodConfig) -> tuple[np.ndarray, np.ndarray]:
    """(val, test) scores of one single-model baseline from its stage-1 result."""
    m = get_method(method.name)
    if m.kind == "train":
        return r.val_logits, r.test_logits
    check_not_double_corrected(method.name, method.base_method, "backdoor.baselines[].name",
                               "backdoor.baselines[].base_method")
    return tuple(np.asarray(m.adjust(np.asarray(getattr(r, f"{s}_logits")), method, r.train_counts, r.q_hat,
                                     r.calibrated_zero_shot(s)))  # type: ignore[return-value]
                 for s in ("val", "test"))


def mean_pairwise_spearman(priors: list[np.ndarray | None]) -> float:
    """Mean Spearman correlation over pairs of the strata's true priors (NaN if unknown or M < 2)."""
    from trainables.metrics import spearman

    known = [p for p in priors if p is not None]
    if len(known) < 2 or len(known) != len(priors):
        return math.nan
    return float(np.mean([spearman(a, b) for a, b in itertools.combinations(known, 2)]))


def run_backdoor(cfg: TrialConfig, stage1: Callable, compute_metrics: Callable) -> tuple[dict, object, list[dict]]:
    """Evaluate one backdoor configuration on every replicate of ``cfg.replicates``.

    Returns (metrics: mean and sample s.d. over replicates plus the paired gains, the first
    replicate's stage-1 result with its logits replaced by the adjusted scores (for the artifacts),
    per-replicate details for ``replicates.json``).

    ``stage1(trial_cfg, backbone, method, seed)`` returns a cached stage-1 result of the replicate's
    config (fine-tuning it when missing); ``compute_metrics(logits, labels, group_counts, q_hat,
    split, true_prior)`` scores a split. P-groups use the trial's own backbone's q_hat (and true
    prior) so that every method in a cell is grouped the same way.
    """
    bd = cfg.backdoor
    check_not_double_corrected(bd.debias, bd.stratum_method.name, "backdoor.debias", "backdoor.stratum_method")
    per_rep: list[dict] = []
    details: list[dict] = []
    correct_bd: list[np.ndarray] = []
    correct_best: list[np.ndarray] = []
    weights_log: list[np.ndarray] = []
    adjusted = None
    for rep in cfg.replicates:
        rc = apply_replicate(cfg, rep)
        plan = strata_plan(rc, rc.seed)
        results = [stage1(rc, bb, bd.stratum_method, s) for bb, s in plan]
        ref = results[0]
        own = stage1(rc, rc.backbone, bd.stratum_method, rc.seed)
        ref_q, ref_true = own.q_hat, own.true_prior
        tau = getattr(bd.stratum_method, "tau", 1.0)  # debias la: the stratum method's tau, 1 when it has none
        val_out = [debias(r.val_logits, bd.debias, r.train_counts, r.q_hat, tau) for r in results]
        test_out = [debias(r.test_logits, bd.debias, r.train_counts, r.q_hat, tau) for r in results]
        # pool positions of the strata (the seeds control has no pool positions: 0..M-1)
        strata_idx = list(dict.fromkeys(bd.strata)) if bd.strata is not None and bd.strata_source == "pool" else list(range(len(plan)))
        inp = WeightingInput(val_out, ref.val_labels, bd.aggregation, bd.weights, list(strata_idx),
                             bd.reliability_shrinkage)
        weighted = weights_for(bd.weighting, inp, test_out)
        w = weighted.weights
        weights_log.append(w if w.ndim == 1 else w.mean(axis=1))

        def score(val_scores, test_scores) -> dict:
            return {**compute_metrics(val_scores, ref.val_labels, ref.group_counts, ref_q, "val", ref_true),
                    **compute_metrics(test_scores, ref.test_labels, ref.group_counts, ref_q, "test", ref_true)}

        metrics = score(weighted.val_scores, weighted.test_scores)
        # Single-model baselines on every pool member: the best one is chosen on validation.
        singles = []
        for i, bb, train, method in baseline_plan(rc):
            v, t = single_outputs(stage1(rc, bb, train, rc.seed), method)
            singles.append((i, method.name, score(v, t), t))
        best = max(range(len(singles)), key=lambda k: singles[k][2]["val/acc"])  # first on ties
        for name in BASELINE_METRICS:
            metrics[f"baseline/best_single/{name}"] = singles[best][2][f"test/{name}"]
            metrics[f"baseline/mean_single/{name}"] = summarize([s[2][f"test/{name}"] for s in singles]).mean
        metrics["pool/prior_spearman"] = mean_pairwise_spearman([r.true_prior for r in results])
        per_rep.append(metrics)
        correct_bd.append((weighted.test_scores.argmax(1) == ref.test_labels).astype(np.float64))
        correct_best.append((singles[best][3].argmax(1) == ref.test_labels).astype(np.float64))
        details.append({"replicate": rep.model_dump(), "label": rep.label(),
                        "weights": np.asarray(w).tolist(),
                        "best_single": {"pool_index": singles[best][0], "method": singles[best][1]},
                        "metrics": {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}})
        if adjusted is None:
            adjusted = dataclasses.replace(ref, val_logits=weighted.val_scores.astype(np.float32),
                                           test_logits=weighted.test_scores.astype(np.float32), q_hat=ref_q,
                                           true_prior=ref_true, history=[], metrics=metrics)
    out = mean_and_std(per_rep)
    for name in GAIN_METRICS:
        a = [m[f"test/{name}"] for m in per_rep]
        b = [m[f"baseline/best_single/{name}"] for m in per_rep]
        per_image = (correct_bd, correct_best) if name == "acc" else (None, None)
        iv = paired_interval(a, b, *per_image)
        diffs = [x - y for x, y in zip(a, b)]
        sd = summarize(diffs).sd
        out.update({f"gain/test/{name}": iv.mean, f"gain/test/{name}_lo": iv.lo,
                    f"gain/test/{name}_hi": iv.hi, f"gain/test/{name}_std": sd})
    out["backdoor/M"] = float(len(weights_log[0]))
    for i, wi in enumerate(np.mean(weights_log, axis=0)):
        out[f"backdoor/w{i}"] = float(wi)
    return out, adjusted, details


def mean_and_std(per_replicate: list[dict]) -> dict:
    """Mean of every metric over replicates, plus ``<name>_std`` (sample s.d., trainables.stats)
    when there are several; ``replicates`` = their number."""
    out = summarize_metrics(per_replicate)
    out["replicates"] = float(len(per_replicate))
    return out


register(Method(name="backdoor", kind="ensemble", doc=__doc__ or ""))
