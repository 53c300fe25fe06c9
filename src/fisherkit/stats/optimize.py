"""Numerical maximum likelihood in an unconstrained parametrisation.

θ = T(u) maps ℝᵖ onto the parameter space (log for (0, ∞), logit for (0, 1), additive log-ratio for
probability vectors). We minimise the mean negative log-likelihood −ℓ(T(u))/N with BFGS (gradients
from torch autograd in float64), then polish with a few Newton steps on the exact autodiff Hessian,
so the MLE is accurate to ~1e-10 rather than to BFGS's stopping tolerance.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import optimize

from ..errors import FisherkitError
from .family import DTYPE, Family, _from_u, _to_u

U_LIMIT = 30.0  # |u| beyond this means θ ran into a bound (e^{-30} ≈ 1e-13)


def _grad_hess(objective, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gradient and Hessian of a scalar torch function at u (plain autograd; d is small)."""
    ut = torch.tensor(u, dtype=DTYPE, requires_grad=True)
    (g,) = torch.autograd.grad(objective(ut), ut, create_graph=True)
    rows = [
        torch.autograd.grad(g[i], ut, retain_graph=True, allow_unused=True, materialize_grads=True)[0]
        if g.requires_grad else torch.zeros_like(ut)
        for i in range(len(u))
    ]
    return g.detach().numpy(), torch.stack(rows).detach().numpy()


def _newton(objective, u: np.ndarray, max_iter: int = 50) -> tuple[np.ndarray, bool]:
    """Damped Newton on the exact autodiff Hessian; (u, converged). Gives up where the Hessian
    is not positive definite (the caller then falls back to BFGS)."""
    f = float(objective(torch.tensor(u, dtype=DTYPE)))
    if not np.isfinite(f):
        return u, False
    for _ in range(max_iter):
        g, h = _grad_hess(objective, u)
        if not (np.isfinite(g).all() and np.isfinite(h).all()):
            return u, False
        try:
            np.linalg.cholesky(h)
        except np.linalg.LinAlgError:
            return u, False
        step = np.linalg.solve(h, g)
        t = 1.0
        while t > 1e-6:
            new = u - t * step
            f_new = float(objective(torch.tensor(new, dtype=DTYPE)))
            if np.isfinite(f_new) and f_new <= f + 1e-15 * (1 + abs(f)):
                break
            t /= 2
        else:
            return u, np.abs(g).max() < 1e-9
        u, f = new, f_new
        if np.abs(t * step).max() < 1e-12 * (1 + np.abs(u).max()) or np.abs(g).max() < 1e-13:
            return u, True
        if np.abs(u).max() > 2 * U_LIMIT:
            return u, False
    return u, False


def _minimise(objective, u0: np.ndarray) -> np.ndarray:
    """Minimise a torch scalar function of u ∈ ℝᵈ; returns the minimiser (numpy).

    Newton first (fast from a good start, e.g. the warm starts of a profile likelihood), then BFGS
    from the same start if Newton fails, polished by Newton."""
    u0 = np.clip(np.nan_to_num(np.asarray(u0, dtype=float), nan=0.0), -U_LIMIT, U_LIMIT)
    u, ok = _newton(objective, u0)
    if ok:
        return u

    def fg(u):
        ut = torch.tensor(u, dtype=DTYPE, requires_grad=True)
        v = objective(ut)
        if not torch.isfinite(v):
            return math.inf, np.zeros_like(u)
        (g,) = torch.autograd.grad(v, ut)
        return float(v.detach()), g.numpy().astype(float)

    res = optimize.minimize(fg, u0, jac=True, method="BFGS", options={"gtol": 1e-10, "maxiter": 2000})
    return _newton(objective, res.x, max_iter=8)[0]


def numerical_mle(family: Family, x: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
    """argmax_θ Σ_i log p(x_i | θ) by BFGS + Newton in the unconstrained coordinates.

    Raises ``FisherkitError`` when a parameter diverges to an infinite bound (the MLE does not
    exist, e.g. a Gamma fitted to identical values); a parameter that converges to a finite bound
    is returned on that bound.
    """
    xt = torch.as_tensor(x, dtype=DTYPE)
    n = len(x)

    def objective(u):
        return -family.logpdf(xt, family.from_unconstrained(u)).sum() / n

    u0 = family.to_unconstrained(start) if start is not None else np.zeros(family.num_params)
    u = _minimise(objective, u0)
    with torch.no_grad():
        theta = family.from_unconstrained(torch.tensor(u, dtype=DTYPE)).numpy()
    for j, (lo, hi) in enumerate(family.bounds):
        if abs(u[j]) > U_LIMIT:
            if math.isinf(lo) and math.isinf(hi):
                bound = math.copysign(math.inf, u[j])
            elif math.isinf(lo):  # θ = hi − eᵘ
                bound = hi if u[j] < 0 else lo
            else:  # θ = lo + eᵘ or a scaled logit
                bound = lo if u[j] < 0 else hi
            if math.isinf(bound):
                raise FisherkitError(
                    f"{family.name}: the MLE does not exist — parameter {family.param_names[j]} diverges "
                    f"to {bound} (are all observations equal?)"
                )
            theta[j] = bound
    return theta


def profile_loglik(family: Family, x: np.ndarray, j: int, value: float, start: np.ndarray) -> tuple[float, np.ndarray]:
    """ℓ_p(value) = max over the other parameters of ℓ(θ) with θ_j = value; returns (ℓ_p, θ)."""
    hook = getattr(family, "profile_nuisance", None)
    if family.num_params == 1:
        theta = np.array([value])
    elif hook is not None:
        theta = hook(x, j, value)
    else:
        xt = torch.as_tensor(x, dtype=DTYPE)
        free = [i for i in range(family.num_params) if i != j]
        bounds = [family.bounds[i] for i in free]
        n = len(x)

        def assemble(u):
            parts = list(_from_u(u, bounds).unbind())
            parts.insert(j, torch.tensor(value, dtype=DTYPE))
            return torch.stack(parts)

        def objective(u):
            return -family.logpdf(xt, assemble(u)).sum() / n

        u = _minimise(objective, _to_u(np.asarray(start, dtype=float)[free], bounds))
        with torch.no_grad():
            theta = assemble(torch.tensor(u, dtype=DTYPE)).numpy()
    return float(family.log_prob_unchecked(x, theta).sum()), theta
