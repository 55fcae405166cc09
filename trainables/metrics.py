"""Evaluation metrics with the names of docs/ARCHITECTURE.md section 3.

Every function takes numpy arrays or torch tensors. ``logits`` are [N, C] scores (argmax = the
prediction); ``labels`` are [N] class indices; ``split`` is the evaluated split (``val`` = the
balanced validation split, ``test`` = the test split) and only prefixes the names.

Group accuracies (D-, P- and D x P groups) are the *mean per-class accuracy* over the classes of the
group that occur in the evaluated split, the same averaging as ``bal_acc``; on a class-balanced split
this equals the per-sample accuracy over the group's samples. An empty group gives NaN.
"""

from __future__ import annotations

import numpy as np
import torch

from trainables.data.longtail import GROUP_NAMES, d_groups

ArrayLike = np.ndarray | torch.Tensor


def _np(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def _predictions(logits: ArrayLike) -> np.ndarray:
    return _np(logits).argmax(axis=1)


def per_class_accuracy(logits: ArrayLike, labels: ArrayLike, num_classes: int) -> np.ndarray:
    """[C] recall of each class on the given samples; NaN for a class with no sample."""
    pred, y = _predictions(logits), _np(labels).astype(np.int64)
    total = np.bincount(y, minlength=num_classes).astype(np.float64)
    correct = np.bincount(y[pred == y], minlength=num_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, correct / total, np.nan)


def confusion_matrix(logits: ArrayLike, labels: ArrayLike, num_classes: int) -> np.ndarray:
    """[C, C] counts; row = true class, column = predicted class."""
    pred, y = _predictions(logits), _np(labels).astype(np.int64)
    return np.bincount(y * num_classes + pred, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def p_groups(q_hat: ArrayLike) -> np.ndarray:
    """Per class 0 / 1 / 2 for P-many / P-medium / P-few: equal thirds of the classes sorted by the
    estimated pre-training prior q_hat, largest first (GLA's convention; ties by class index; when C
    is not a multiple of 3 the first groups get the extra class, as np.array_split does)."""
    q = _np(q_hat).astype(np.float64)
    order = np.argsort(-q, kind="stable")
    groups = np.empty(len(q), dtype=np.int64)
    for g, members in enumerate(np.array_split(order, 3)):
        groups[members] = g
    return groups


def _mean_over(class_acc: np.ndarray, members: np.ndarray) -> float:
    """Mean accuracy of the member classes present in the split; NaN when there are none."""
    values = class_acc[members]
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else float("nan")


def dp_grid(logits: ArrayLike, labels: ArrayLike, group_counts: ArrayLike, q_hat: ArrayLike) -> np.ndarray:
    """[3, 3] accuracy of the D x P cells: row = D-group, column = P-group (many, medium, few)."""
    C = _np(logits).shape[1]
    return _dp_grid(per_class_accuracy(logits, labels, C), d_groups(_np(group_counts)), p_groups(q_hat))


def _dp_grid(class_acc: np.ndarray, dg: np.ndarray, pg: np.ndarray) -> np.ndarray:
    grid = np.full((3, 3), np.nan)
    for d in range(3):
        for p in range(3):
            grid[d, p] = _mean_over(class_acc, np.flatnonzero((dg == d) & (pg == p)))
    return grid


def _macro_f1(pred: np.ndarray, y: np.ndarray, num_classes: int) -> float:
    # F1_c = 2 TP / (2 TP + FP + FN), averaged over the classes that occur as a label or a
    # prediction (scikit-learn's f1_score(average="macro") with its default labels).
    tp = np.bincount(y[pred == y], minlength=num_classes).astype(np.float64)
    n_true = np.bincount(y, minlength=num_classes)
    n_pred = np.bincount(pred, minlength=num_classes)
    denom = (n_true + n_pred).astype(np.float64)  # = 2 TP + FP + FN
    seen = denom > 0
    return float((2 * tp[seen] / denom[seen]).mean()) if seen.any() else float("nan")


def spearman(a: ArrayLike, b: ArrayLike) -> float:
    """Spearman rank correlation of two vectors (average ranks for ties); NaN when one is constant."""
    from scipy.stats import rankdata

    ra, rb = rankdata(_np(a).astype(np.float64)), rankdata(_np(b).astype(np.float64))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def prior_error(q_hat: ArrayLike | None, true_prior: ArrayLike | None) -> dict[str, float]:
    """How well q_hat estimates a backbone's true pre-training prior (toy models know it).

    ``prior/spearman``: Spearman rank correlation of q_hat and the true prior (1 = same ranking, so
    the same P-groups); ``prior/tv``: total variation 0.5 * sum_y |q_hat(y) - p_pre(y)| (both
    normalised). NaN when either is missing.
    """
    if q_hat is None or true_prior is None:
        return {"prior/spearman": float("nan"), "prior/tv": float("nan")}
    q, p = _np(q_hat).astype(np.float64), _np(true_prior).astype(np.float64)
    return {"prior/spearman": spearman(q, p), "prior/tv": float(0.5 * np.abs(q / q.sum() - p / p.sum()).sum())}


def compute_metrics(logits: ArrayLike, labels: ArrayLike, group_counts: ArrayLike,
                    q_hat: ArrayLike | None = None, split: str = "val",
                    true_prior: ArrayLike | None = None) -> dict[str, float]:
    """Every ``{split}/...`` metric of one split; P- and D x P metrics are NaN without ``q_hat``,
    ``p_true_*`` NaN without ``true_prior``."""
    z = _np(logits)
    C = z.shape[1]
    y = _np(labels).astype(np.int64)
    pred = z.argmax(axis=1)
    class_acc = per_class_accuracy(z, y, C)
    out: dict[str, float] = {}
    # acc: top-1 accuracy over all samples of the split.
    out[f"{split}/acc"] = float((pred == y).mean()) if len(y) else float("nan")
    # bal_acc: mean per-class recall over the classes present in the split.
    out[f"{split}/bal_acc"] = _mean_over(class_acc, np.arange(C))
    # macro_f1: see _macro_f1.
    out[f"{split}/macro_f1"] = _macro_f1(pred, y, C)
    # worst_class_acc: the lowest per-class recall among the classes present in the split.
    present = class_acc[~np.isnan(class_acc)]
    out[f"{split}/worst_class_acc"] = float(present.min()) if len(present) else float("nan")
    # d_*: D-groups by downstream training count, many > 100, medium 20..100, few < 20, counted on
    # group_counts (the training counts, or those of a reference imbalance ratio; DataSplits.group_rule).
    dg = d_groups(_np(group_counts))
    if len(dg) != C:
        raise ValueError(f"group_counts has {len(dg)} classes but logits have {C}")
    for g, name in enumerate(GROUP_NAMES):
        out[f"{split}/d_{name}"] = _mean_over(class_acc, np.flatnonzero(dg == g))
    # p_*: P-groups, equal thirds of the classes sorted by q_hat descending (see p_groups);
    # dp_{d}_{p}: the classes in D-group d and P-group p.
    if q_hat is not None:
        pg = p_groups(q_hat)
        if len(pg) != C:
            raise ValueError(f"q_hat has {len(pg)} classes but logits have {C}")
        grid = _dp_grid(class_acc, dg, pg)
    else:
        pg, grid = None, np.full((3, 3), np.nan)
    for g, name in enumerate(GROUP_NAMES):
        out[f"{split}/p_{name}"] = _mean_over(class_acc, np.flatnonzero(pg == g)) if pg is not None else float("nan")
    for d, dname in enumerate(GROUP_NAMES):
        for p, pname in enumerate(GROUP_NAMES):
            out[f"{split}/dp_{dname}_{pname}"] = float(grid[d, p])
    # p_true_*: the same thirds, by the backbone's TRUE pre-training prior (toy models), so the
    # P-groups do not inherit q_hat's estimation error.
    tg = p_groups(true_prior) if true_prior is not None else None
    if tg is not None and len(tg) != C:
        raise ValueError(f"true_prior has {len(tg)} classes but logits have {C}")
    for g, name in enumerate(GROUP_NAMES):
        out[f"{split}/p_true_{name}"] = _mean_over(class_acc, np.flatnonzero(tg == g)) if tg is not None else float("nan")
    return out
