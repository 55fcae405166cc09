"""Estimate a foundation model's pre-training label prior from its logits (GLA, NeurIPS 2023).

A model trained on data with label prior q outputs logits z ~ log p_bal(y | x) + log q(y). Given z
on a class-balanced labelled split (never the test split), the estimate is

    q_hat = argmin_{q in simplex} mean_i CE(softmax(z_i - log q), y_i),    q = softmax(theta).

Since softmax(z - log softmax(theta)) = softmax(z - theta), the objective is convex in theta; at the
optimum the debiased model's mean predicted probability of every class equals that class's share
of the split (uniform on a balanced split). We solve it in float64 with full-batch L-BFGS, which is
deterministic for given inputs.
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
    # params = [1/T, theta_1..theta_C]; without calibration 1/T stays fixed at 1.
    params = torch.cat([torch.ones(1, dtype=torch.float64), torch.zeros(C, dtype=torch.float64)])
    params.requires_grad_()

    def objective(p: torch.Tensor) -> torch.Tensor:
        inv_t = p[0] if calibrate_temperature else p[0].detach()
        return F.cross_entropy(z * inv_t - torch.log_softmax(p[1:], dim=0), y)

    params = _minimise(objective, params, num_iters, lr)
    return torch.softmax(params[1:], dim=0).numpy()
