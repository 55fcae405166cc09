"""Weighting rules of the backdoor adjustment: P(c), or a class-conditional w_{c,y}, per stratum.

Each rule is one function registered in ``WEIGHTINGS`` (``backdoor.weighting`` names it):
``rule(inp: WeightingInput) -> weights`` with weights [M] (one per stratum, on the simplex) or
[M, C] (per class y, a column on the simplex over strata). A rule that looks at validation labels
is registered with ``fitted=True``; ``weights_for`` then *cross-fits* it so that the validation
scores a search selects on never come from weights fitted on the same images:

- the validation split is cut into two class-stratified halves (``FOLDS``, fixed seed);
- each half is scored with the weights fitted on the other half (the reported ``val/*``);
- the test split is scored once with the weights fitted on the whole validation split.

Rules:

- ``uniform``: w_c = 1/M (the paper's choice);
- ``searched``: the raw non-negative ``backdoor.weights`` the study's searcher proposes (one per
  pool member), normalised over the chosen strata;
- ``fitted``: weights on the simplex of minimum validation NLL from uniform (L-BFGS), kept only when
  their accuracy on the fitting data is at least uniform's;
- ``reliability``: class-conditional; stratum c counts for class y in proportion to its per-class
  F1 on validation (F1, not recall: recall rewards a stratum that over-predicts y), shrunk toward
  uniform by ``backdoor.reliability_shrinkage``: w_{c,y} = (1 - s) F1_c(y) / sum_c' F1_c'(y) + s / M.
  Only in log-probability space (``backdoor.aggregation: logprob``): there each stratum's score is
  its own log-softmax, so adding a constant to one stratum's logits changes nothing; in logit space
  a class-conditional weight would make the result depend on each stratum's arbitrary offset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from trainables.registry import Registry

FOLDS = 2
FOLD_SEED = 0
_EPS = 1e-12


@dataclass
class WeightingInput:
    """What a rule may read: validation outputs of the M strata (after their debias), labels."""

    val: list[np.ndarray]        # M arrays [N, C], each stratum's (debiased) logits
    labels: np.ndarray           # [N]
    space: str                   # backdoor.aggregation: logit | prob | logprob
    weights: list[float] | None  # backdoor.weights (raw, per pool member) for 'searched'
    strata_idx: list[int]        # pool positions of the strata
    shrinkage: float             # backdoor.reliability_shrinkage


@dataclass(frozen=True)
class Weighting:
    """A registered rule; ``fitted`` = reads validation labels (so it is cross-fitted)."""

    name: str
    fn: Callable[[WeightingInput], np.ndarray]
    fitted: bool
    spaces: tuple[str, ...] = ("logit", "prob", "logprob")


WEIGHTINGS: Registry[Weighting] = Registry("backdoor.weighting")


def weighting(name: str, fitted: bool = False,
              spaces: tuple[str, ...] = ("logit", "prob", "logprob")) -> Callable:
    """Decorator registering ``fn`` as the rule ``name``."""
    def deco(fn: Callable[[WeightingInput], np.ndarray]) -> Callable[[WeightingInput], np.ndarray]:
        WEIGHTINGS.register(name)(Weighting(name, fn, fitted, spaces))
        return fn
    return deco


# ------------------------------------------------------------------------------------ helpers

def log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64."""
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


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


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of scores [N, C]."""
    return float((np.asarray(scores).argmax(1) == np.asarray(labels)).mean())


def uniform_weights(m: int) -> np.ndarray:
    """P(c) = 1/M."""
    return np.full(m, 1.0 / m)


def normalise_weights(raw: list[float] | np.ndarray) -> np.ndarray:
    """Non-negative raw weights -> the simplex; all-zero raw weights become uniform."""
    w = np.clip(np.asarray(raw, dtype=np.float64), 0.0, None)
    total = w.sum()
    return w / total if total > 0 else uniform_weights(len(w))


def per_class_f1(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """[C] F1 = 2 TP / (2 TP + FP + FN) per class; 0 for a class neither present nor predicted."""
    y = np.asarray(labels, dtype=np.int64)
    tp = np.bincount(y[pred == y], minlength=num_classes).astype(np.float64)
    denom = (np.bincount(y, minlength=num_classes) + np.bincount(pred, minlength=num_classes)).astype(np.float64)
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def stratified_folds(labels: np.ndarray, folds: int = FOLDS, seed: int = FOLD_SEED) -> np.ndarray:
    """[N] fold index per image: each class's images dealt round-robin after a seeded shuffle."""
    y = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), dtype=np.int64)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        fold[idx] = np.arange(len(idx)) % folds
    return fold


# ------------------------------------------------------------------------------------ rules

@weighting("uniform")
def _uniform(inp: WeightingInput) -> np.ndarray:
    return uniform_weights(len(inp.val))


@weighting("searched")
def _searched(inp: WeightingInput) -> np.ndarray:
    if inp.weights is None:
        raise ValueError("backdoor.weighting = 'searched' needs backdoor.weights (one raw weight per pool "
                         "member); search it with backdoor.weights: {simplex: <pool size>}")
    return normalise_weights([inp.weights[i] if i < len(inp.weights) else 0.0 for i in inp.strata_idx])


@weighting("fitted", fitted=True)
def _fitted(inp: WeightingInput, max_iter: int = 50) -> np.ndarray:
    import torch  # imported on use: config validation imports this module

    m = len(inp.val)
    uniform = uniform_weights(m)
    if m == 1:
        return uniform
    if inp.space == "logit":
        comps = [np.asarray(z, dtype=np.float64) for z in inp.val]
    elif inp.space == "logprob":
        comps = [log_softmax(z) for z in inp.val]
    else:
        comps = [np.exp(log_softmax(z)) for z in inp.val]
    x = torch.tensor(np.stack(comps), dtype=torch.float64)  # [M, N, C]
    y = torch.as_tensor(np.asarray(inp.labels), dtype=torch.long)
    theta = torch.zeros(m, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        s = torch.einsum("m,mnc->nc", torch.softmax(theta, 0), x)
        if inp.space == "prob":
            s = torch.log(s + _EPS)
        loss = torch.nn.functional.cross_entropy(s, y)
        loss.backward()
        return loss

    opt.step(closure)
    fitted = torch.softmax(theta.detach(), 0).numpy()
    acc_fit = accuracy(aggregate(inp.val, fitted, inp.space), inp.labels)
    acc_uni = accuracy(aggregate(inp.val, uniform, inp.space), inp.labels)
    return fitted if acc_fit >= acc_uni else uniform


@weighting("reliability", fitted=True, spaces=("logprob",))
def _reliability(inp: WeightingInput) -> np.ndarray:
    m, c = len(inp.val), np.asarray(inp.val[0]).shape[1]
    f1 = np.stack([per_class_f1(np.asarray(z).argmax(1), inp.labels, c) for z in inp.val])  # [M, C]
    total = f1.sum(axis=0, keepdims=True)
    rel = np.where(total > 0, f1 / np.where(total > 0, total, 1.0), 1.0 / m)
    return (1.0 - inp.shrinkage) * rel + inp.shrinkage / m


# ------------------------------------------------------------------------------------ use

def get_weighting(name: str) -> Weighting:
    """The rule registered as ``name`` (KeyError listing the known rules otherwise)."""
    return WEIGHTINGS.get(name)


def check_space(name: str, space: str) -> None:
    """ValueError when rule ``name`` is not defined in aggregation ``space``."""
    rule = get_weighting(name)
    if space not in rule.spaces:
        raise ValueError(f"backdoor.weighting = {name!r} is only defined for backdoor.aggregation in "
                         f"{list(rule.spaces)} (class-conditional weights in {space!r} space change when a "
                         f"stratum's logits shift by a constant); set backdoor.aggregation: {rule.spaces[0]}")


@dataclass
class Weighted:
    """Scores of the validation (cross-fitted when the rule is fitted) and test splits, and weights."""

    val_scores: np.ndarray
    test_scores: np.ndarray
    weights: np.ndarray  # the weights the test split used: [M] or [M, C]


def weights_for(name: str, inp: WeightingInput, test: list[np.ndarray]) -> Weighted:
    """Apply rule ``name``: test scored with weights from all of validation; validation scored
    with weights from the other fold when the rule is fitted (see the module docstring)."""
    rule = get_weighting(name)
    check_space(name, inp.space)
    w = np.asarray(rule.fn(inp), dtype=np.float64)
    test_scores = aggregate(test, w, inp.space)
    if not rule.fitted:
        return Weighted(aggregate(inp.val, w, inp.space), test_scores, w)
    fold = stratified_folds(inp.labels)
    val_scores = np.zeros_like(np.asarray(inp.val[0], dtype=np.float64))
    for k in range(FOLDS):
        fit, score = fold != k, fold == k
        sub = WeightingInput([np.asarray(z)[fit] for z in inp.val], np.asarray(inp.labels)[fit], inp.space,
                             inp.weights, inp.strata_idx, inp.shrinkage)
        wk = np.asarray(rule.fn(sub), dtype=np.float64)
        val_scores[score] = aggregate([np.asarray(z)[score] for z in inp.val], wk, inp.space)
    return Weighted(val_scores, test_scores, w)


__all__ = ["FOLDS", "WEIGHTINGS", "Weighted", "Weighting", "WeightingInput", "accuracy", "aggregate",
           "check_space", "get_weighting", "log_softmax", "normalise_weights", "per_class_f1",
           "stratified_folds", "uniform_weights", "weighting", "weights_for"]
