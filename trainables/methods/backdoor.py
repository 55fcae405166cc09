"""The backdoor adjustment: P(Y | do(X)) = sum_c P(Y | X, c) P(c) over confounder strata.

Each stratum c is one foundation model (an "incomplete semantic factor"), fine-tuned on its own
as a stage-1 trial. The adjusted score is ``sum_c w_c * f_c(x)`` where ``f_c`` is the stratum's
(optionally debiased) output in logit, probability or log-probability space and ``w`` is P(c):

- ``uniform``: w_c = 1/M, the paper's choice;
- ``searched``: raw non-negative weights proposed by the study's searcher, normalised to the simplex;
- ``fitted``: weights on the simplex fitted on the *validation* split (minimum NLL from uniform;
  the fitted weights are kept only when their validation accuracy is at least uniform's, so
  fitting never does worse on validation than uniform);
- ``bias_conditional``: class-conditional weights from each stratum's estimated pre-training prior
  q_c: w_{c,y} = softmax_c(-T * log q_c(y)), so a stratum that saw class y rarely counts more for
  y (T = ``bias_temperature``; T -> 0 gives uniform). Its effect is measured, not assumed.

Only validation logits and labels are used to fit or select anything; test logits are scored once
with the weights the validation split chose.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from trainables.methods import Method, log_prior, log_train_prior, register
from trainables.stats import summarize_metrics

_EPS = 1e-12


def log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64."""
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def debias(logits: np.ndarray, mode: str, train_counts: np.ndarray, q_hat: np.ndarray | None,
           tau: float = 1.0) -> np.ndarray:
    """Post-hoc debias of one stratum: none; la: z - tau*log p_s; gla: z - tau*log p_s - log q_hat."""
    z = np.asarray(logits, dtype=np.float64)
    if mode == "none":
        return z
    z = z - tau * log_train_prior(train_counts).double().numpy()
    if mode == "la":
        return z
    if mode == "gla":
        if q_hat is None:
            raise ValueError("backdoor.debias = 'gla' needs an estimated pre-training prior, but this "
                             "stratum's backbone has no zero-shot classifier; use debias: la")
        return z - log_prior(q_hat).double().numpy()
    raise ValueError(f"unknown backdoor.debias {mode!r}; expected none, la or gla")


# Training losses whose logits already have the downstream prior removed (gla_train also the
# pre-training prior): a post-hoc la / gla on top would subtract log p_s a second time.
_TRAIN_PRIOR_REMOVED = {"la", "bs", "gla_train"}


def check_not_double_corrected(debias_mode: str, trained_with: str, field: str, method_field: str) -> None:
    """ValueError when a post-hoc correction would subtract a prior the training loss already removed."""
    if debias_mode in ("la", "gla", "posthoc_la") and trained_with in _TRAIN_PRIOR_REMOVED:
        raise ValueError(f"{field} = {debias_mode!r} on logits trained with {trained_with!r} subtracts "
                         f"log p_s twice ({trained_with} already adjusts for the training prior); "
                         f"set {method_field} to ce (or another unadjusted loss), or drop the post-hoc step")


def aggregate(strata: list[np.ndarray], weights: np.ndarray, space: str = "logit") -> np.ndarray:
    """Adjusted scores [N, C] from M strata outputs [N, C] and weights [M] or [M, C].

    logit: sum_c w_c z_c; logprob: sum_c w_c log softmax(z_c);
    prob: log sum_c w_c softmax(z_c) (log so that scores stay comparable across spaces).
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim == 1:
        w = w[:, None]
    if len(strata) != w.shape[0]:
        raise ValueError(f"{len(strata)} strata but {w.shape[0]} weights")
    if space == "logit":
        return sum(wc[None, :] * np.asarray(z, dtype=np.float64) for wc, z in zip(w, strata))
    if space == "logprob":
        return sum(wc[None, :] * log_softmax(z) for wc, z in zip(w, strata))
    if space == "prob":
        p = sum(wc[None, :] * np.exp(log_softmax(z)) for wc, z in zip(w, strata))
        return np.log(p + _EPS)
    raise ValueError(f"unknown backdoor.aggregation {space!r}; expected logit, prob or logprob")


def uniform_weights(m: int) -> np.ndarray:
    """P(c) = 1/M, the paper's weighting."""
    return np.full(m, 1.0 / m)


def normalise_weights(raw: list[float] | np.ndarray) -> np.ndarray:
    """Non-negative raw weights -> the simplex; all-zero raw weights become uniform."""
    w = np.clip(np.asarray(raw, dtype=np.float64), 0.0, None)
    total = w.sum()
    return w / total if total > 0 else uniform_weights(len(w))


def bias_conditional_weights(q_hats: list[np.ndarray], temperature: float) -> np.ndarray:
    """Class-conditional weights [M, C]: w_{c,y} = softmax_c(-T * log q_c(y))."""
    logq = np.log(np.stack([np.asarray(q, dtype=np.float64) for q in q_hats]) + _EPS)
    a = -temperature * logq
    a = a - a.max(axis=0, keepdims=True)
    w = np.exp(a)
    return w / w.sum(axis=0, keepdims=True)


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of scores [N, C]."""
    return float((np.asarray(scores).argmax(1) == np.asarray(labels)).mean())


def fit_weights(val_strata: list[np.ndarray], val_labels: np.ndarray, space: str = "logit",
                max_iter: int = 50) -> np.ndarray:
    """Weights on the simplex fitted on the validation split; never worse than uniform on it.

    Minimises the NLL of softmax(aggregate(strata, softmax(theta))) from theta = 0 (uniform) with
    L-BFGS (a smooth problem in M - 1 dimensions), then keeps the fitted weights only if their
    validation accuracy >= uniform's.
    """
    m = len(val_strata)
    uniform = uniform_weights(m)
    if m == 1:
        return uniform
    if space == "logit":
        comps = [np.asarray(z, dtype=np.float64) for z in val_strata]
    elif space == "logprob":
        comps = [log_softmax(z) for z in val_strata]
    else:
        comps = [np.exp(log_softmax(z)) for z in val_strata]
    x = torch.tensor(np.stack(comps), dtype=torch.float64)  # [M, N, C]
    y = torch.as_tensor(np.asarray(val_labels), dtype=torch.long)
    theta = torch.zeros(m, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        s = torch.einsum("m,mnc->nc", torch.softmax(theta, 0), x)
        if space == "prob":
            s = torch.log(s + _EPS)
        loss = torch.nn.functional.cross_entropy(s, y)
        loss.backward()
        return loss

    opt.step(closure)
    fitted = torch.softmax(theta.detach(), 0).numpy()
    acc_fit = accuracy(aggregate(val_strata, fitted, space), val_labels)
    acc_uni = accuracy(aggregate(val_strata, uniform, space), val_labels)
    return fitted if acc_fit >= acc_uni else uniform


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


def stratum_weights(cfg, val_outputs: list[np.ndarray], val_labels: np.ndarray,
                    q_hats: list[np.ndarray | None], strata_idx: list[int]) -> np.ndarray:
    """P(c) for the chosen weighting, from validation data only: [M] or [M, C]."""
    bd = cfg.backdoor
    m = len(val_outputs)
    if bd.weighting == "uniform":
        return uniform_weights(m)
    if bd.weighting == "searched":
        if bd.weights is None:
            raise ValueError("backdoor.weighting = 'searched' needs backdoor.weights (one raw weight per "
                             "pool member); search it with {simplex: <pool size>}")
        raw = [bd.weights[i] if i < len(bd.weights) else 0.0 for i in strata_idx]
        return normalise_weights(raw)
    if bd.weighting == "fitted":
        return fit_weights(val_outputs, val_labels, bd.aggregation)
    if bd.weighting == "bias_conditional":
        if any(q is None for q in q_hats):
            raise ValueError("backdoor.weighting = 'bias_conditional' needs every stratum's estimated "
                             "pre-training prior; a backbone has no zero-shot classifier")
        return bias_conditional_weights(q_hats, bd.bias_temperature)
    raise ValueError(f"unknown backdoor.weighting {bd.weighting!r}")


def run_backdoor(cfg, stage1, compute_metrics) -> tuple[dict, object]:
    """Evaluate one backdoor configuration on every seed of ``cfg.seeds``.

    Returns (mean and std metrics over seeds, the first seed's stage-1 result with its logits
    replaced by the adjusted scores, for the trial's artifacts).

    ``stage1(backbone, method, seed)`` returns a cached stage-1 result (fine-tuning it when
    missing); ``compute_metrics(logits, labels, group_counts, q_hat, split)`` scores a split.
    Weights are chosen on validation; test is scored once with those weights. P-groups use the
    trial's own backbone's q_hat so that every method in a cell is grouped the same way.
    """
    bd = cfg.backdoor
    per_seed: list[dict] = []
    weights_log: list[np.ndarray] = []
    adjusted = None
    for seed in cfg.seeds:
        plan = strata_plan(cfg, seed)
        results = [stage1(bb, bd.stratum_method, s) for bb, s in plan]
        ref = results[0]
        own = [r for (bb, s), r in zip(plan, results) if bb == cfg.backbone and s == seed]
        ref_q = own[0].q_hat if own else stage1(cfg.backbone, bd.stratum_method, seed).q_hat
        tau = bd.stratum_method.tau
        check_not_double_corrected(bd.debias, bd.stratum_method.name, "backdoor.debias", "backdoor.stratum_method")
        val_out = [debias(r.val_logits, bd.debias, r.train_counts, r.q_hat, tau) for r in results]
        test_out = [debias(r.test_logits, bd.debias, r.train_counts, r.q_hat, tau) for r in results]
        # pool positions of the strata (the seeds control has no pool positions: 0..M-1)
        strata_idx = bd.strata if bd.strata is not None and bd.strata_source == "pool" else list(range(len(plan)))
        w = stratum_weights(cfg, val_out, ref.val_labels, [r.q_hat for r in results], list(strata_idx))
        weights_log.append(w if w.ndim == 1 else w.mean(axis=1))
        val_scores = aggregate(val_out, w, bd.aggregation)
        test_scores = aggregate(test_out, w, bd.aggregation)
        metrics = {}
        metrics.update(compute_metrics(val_scores, ref.val_labels, ref.group_counts, ref_q, "val"))
        metrics.update(compute_metrics(test_scores, ref.test_labels, ref.group_counts, ref_q, "test"))
        per_seed.append(metrics)
        if adjusted is None:
            adjusted = dataclasses.replace(ref, val_logits=val_scores.astype(np.float32),
                                           test_logits=test_scores.astype(np.float32), q_hat=ref_q,
                                           history=[], metrics=metrics)
    out = mean_and_std(per_seed)
    out["backdoor/M"] = float(len(weights_log[0]))
    for i, wi in enumerate(np.mean(weights_log, axis=0)):
        out[f"backdoor/w{i}"] = float(wi)
    return out, adjusted


def mean_and_std(per_seed: list[dict]) -> dict:
    """Mean of every metric over seeds, plus ``<name>_std`` (sample s.d., trainables.stats) when seeds > 1."""
    out = summarize_metrics(per_seed)
    out["seeds"] = float(len(per_seed))
    return out


register(Method(name="backdoor", kind="ensemble", doc=__doc__ or ""))
