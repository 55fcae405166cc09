"""Estimate a foundation model's pre-training label prior from its logits (GLA, NeurIPS 2023).

A model trained on data with label prior q outputs logits z ~ log p_bal(y | x) + log q(y). Given z
on a class-balanced labelled split (never the test split), the estimate is

    q_hat = argmin_{q in simplex} mean_i CE(softmax(z_i - log q), y_i),    q = softmax(theta).

Since softmax(z - log softmax(theta)) = softmax(z - theta), the objective is convex in theta; at the
optimum the debiased model's mean predicted probability of every class equals that class's share
of the split (uniform on a balanced split). We solve it in float64 with full-batch L-BFGS, which is
deterministic for given inputs. GLA's own solver (BeierZhu/GLA, ``GLA.FS.public/trainers/util.py``,
``pp_solver``) minimises the same objective with a Lagrangian on the simplex.

The cross-entropy weights each class equally (``F.cross_entropy(weight=1/n_y)``), which is the plain
mean on a balanced split and keeps a split with a few short classes from biasing q. A class with no
example in the split (CIFAR-100-LT's head class, whose every training image is used for training)
cannot be estimated: the objective would push its q to 1. It is left out of the fit and given the
median of the other classes' estimates.

GLA calibrates the zero-shot logits first (``gla_temperature``: the T at which the mean confidence
of softmax(z / T) equals the accuracy, GLA's ``Calibrater.search_T``) and estimates q from z / T.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

ArrayLike = np.ndarray | torch.Tensor


def _as_tensors(logits: ArrayLike, labels: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    z = torch.as_tensor(logits).detach().to("cpu", torch.float64)
    y = torch.as_tensor(labels).detach().to("cpu", torch.int64)
    if z.ndim != 2 or y.shape != (z.shape[0],):
        raise ValueError(f"expected logits [N, C] and labels [N], got {tuple(z.shape)} and {tuple(y.shape)}")
    if not torch.isfinite(z).all():
        raise ValueError("logits contain NaN or inf; the prior cannot be estimated from them")
    return z, y


def _minimise(objective, param: torch.Tensor, num_iters: int, lr: float) -> torch.Tensor:
    opt = torch.optim.LBFGS([param], lr=lr, max_iter=num_iters, tolerance_grad=1e-10,
                            tolerance_change=1e-14, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = objective(param)
        loss.backward()
        return loss

    opt.step(closure)
    return param.detach()


def fit_temperature(logits: ArrayLike, labels: ArrayLike, num_iters: int = 200, lr: float = 1.0) -> float:
    """The temperature T minimising mean CE(softmax(z / T), y) (Guo et al. 2017's calibration)."""
    z, y = _as_tensors(logits, labels)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)  # T = exp(log_t) stays positive
    log_t = _minimise(lambda p: F.cross_entropy(z / p.exp(), y), log_t, num_iters, lr)
    return float(log_t.exp())


def gla_temperature(logits: ArrayLike, labels: ArrayLike, thres: float = 0.1, t_min: float = 0.1,
                    t_max: float = 10.0, max_steps: int = 500) -> float:
    """GLA's temperature: T with |100 * mean_i max softmax(z_i / T) - accuracy %| <= ``thres``.

    The search is GLA's (``Calibrater.search_T``): interpolate between T_min and T_max by their
    confidence gaps, widen the bracket by 1.1 while it does not contain the accuracy, else shrink it
    to the interpolated point. Deterministic; ValueError when ``max_steps`` do not reach ``thres``.
    """
    z, y = _as_tensors(logits, labels)
    acc = 100.0 * float((z.argmax(1) == y).double().mean())

    def confidence(t: float) -> float:
        return 100.0 * float(torch.softmax(z / t, dim=-1).max(dim=-1).values.mean())

    for _ in range(max_steps):
        gap_min, gap_max = abs(confidence(t_min) - acc), abs(confidence(t_max) - acc)
        alpha = gap_min / (gap_min + gap_max) if gap_min + gap_max > 0 else 0.5
        t_mid = t_min * (1 - alpha) + t_max * alpha
        if abs(confidence(t_mid) - acc) <= thres:
            return float(t_mid)
        if confidence(t_max) > acc:
            t_max *= 1.1
        elif confidence(t_min) < acc:
            t_min /= 1.1
        elif gap_min < gap_max:
            t_max = t_mid
        else:
            t_min = t_mid
    raise ValueError(f"GLA temperature search did not reach |confidence - accuracy| <= {thres} in "
                     f"{max_steps} steps (accuracy {acc:.2f} %); the zero-shot logits may be constant")


def estimate_prior(logits: ArrayLike, labels: ArrayLike, num_iters: int = 500, lr: float = 1.0,
                   calibrate_temperature: bool = False) -> np.ndarray:
    """q_hat [C] on the simplex (see the module docstring) from logits [N, C] of a balanced split.

    ``calibrate_temperature`` also fits a temperature T, minimising CE(softmax(z / T - log q)) over
    (1/T, theta) jointly; the objective stays convex in both. Fitting T on z first (``fit_temperature``)
    would be wrong here: on a balanced split the prior's bias makes z look miscalibrated and T would
    absorb part of it. ``num_iters`` and ``lr`` are L-BFGS's iteration budget and step size.
    """
    z, y = _as_tensors(logits, labels)
    C = z.shape[1]
    counts = torch.bincount(y, minlength=C)
    present = counts > 0
    if not present.any():
        raise ValueError("no labelled example to estimate the prior from (empty split)")
    if not present.all():
        keep = torch.nonzero(present).flatten()
        remap = torch.full((C,), -1, dtype=torch.int64)
        remap[keep] = torch.arange(len(keep))
        q_sub = estimate_prior(z[:, keep], remap[y], num_iters, lr, calibrate_temperature)
        q = np.full(C, float(np.median(q_sub)))
        q[keep.numpy()] = q_sub
        return q / q.sum()
    weight = (1.0 / counts.double()) * (C / (1.0 / counts.double()).sum())
    # params = [1/T, theta_1..theta_C]; without calibration 1/T stays fixed at 1.
    params = torch.cat([torch.ones(1, dtype=torch.float64), torch.zeros(C, dtype=torch.float64)])
    params.requires_grad_()

    def objective(p: torch.Tensor) -> torch.Tensor:
        inv_t = p[0] if calibrate_temperature else p[0].detach()
        return F.cross_entropy(z * inv_t - torch.log_softmax(p[1:], dim=0), y, weight=weight)

    params = _minimise(objective, params, num_iters, lr)
    return torch.softmax(params[1:], dim=0).numpy()
