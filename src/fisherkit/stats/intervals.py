"""Confidence intervals for one parameter θ_j.

* Wald: θ̂_j ± z_{1−α/2} · se_j with se_j = √cov_jj. Symmetric, and meaningless where the Fisher
  information diverges (an MLE on the boundary, e.g. p̂ = 0).
* Profile likelihood: {v : 2[ℓ(θ̂) − ℓ_p(v)] ≤ χ²_{1, 1−α}} with ℓ_p(v) = max_{θ: θ_j = v} ℓ(θ)
  (Wilks). Invariant under reparametrisation, asymmetric where the likelihood is, and still defined
  when θ̂_j is on a bound: that side of the interval is the bound itself (one-sided).

The profile endpoints are found by bracketing in the unconstrained coordinate of θ_j (steps doubling
from θ̂_j) and ``scipy.optimize.brentq``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, stats

from ..errors import FisherkitError
from .family import Family, _from_u, _to_u
from .optimize import profile_loglik
import torch


def _check_alpha(alpha: float) -> float:
    if not 0 < alpha < 1:
        raise FisherkitError(f"alpha must be in (0, 1), got {alpha}")
    return float(alpha)


def wald_interval(params: np.ndarray, se: np.ndarray, alpha: float = 0.05) -> np.ndarray:
    """(p, 2) array of θ̂ ± z_{1−α/2} se."""
    z = stats.norm.ppf(1 - _check_alpha(alpha) / 2)
    return np.column_stack([params - z * se, params + z * se])


def profile_interval(
    family: Family, x: np.ndarray, theta_hat: np.ndarray, loglik_hat: float, j: int, alpha: float = 0.05
) -> tuple[float, float]:
    """Profile-likelihood interval for parameter j: the two roots of 2[ℓ̂ − ℓ_p(v)] = χ²_{1,1−α}."""
    crit = stats.chi2.ppf(1 - _check_alpha(alpha), 1)
    bounds = [family.bounds[j]]
    lo_b, hi_b = family.bounds[j]
    start = {"theta": np.array(theta_hat, dtype=float)}

    def theta_of(u: float) -> float:
        return float(_from_u(torch.tensor([u], dtype=torch.float64), bounds)[0])

    def excess(u: float) -> float:  # > 0 outside the interval
        v = theta_of(u)
        ll, th = profile_loglik(family, x, j, v, start["theta"])
        if np.isfinite(ll):
            start["theta"] = th
        return 2 * (loglik_hat - ll) - crit if np.isfinite(ll) else math.inf

    u_hat = float(_to_u(np.array([theta_hat[j]]), bounds)[0])
    u_hat = float(np.clip(u_hat, -30.0, 30.0))
    out = []
    for side in (-1.0, 1.0):
        # which bound of θ lies on this side (the u-map of (-inf, hi) is decreasing)
        decreasing = math.isinf(lo_b) and not math.isinf(hi_b)
        bound = (hi_b if side < 0 else lo_b) if decreasing else (lo_b if side < 0 else hi_b)
        if theta_hat[j] == bound:
            out.append(bound)
            continue
        start["theta"] = np.array(theta_hat, dtype=float)
        inner, step = u_hat, 0.25
        found = None
        while abs(inner - u_hat) < 60:
            outer = u_hat + side * step
            if excess(outer) > 0:
                found = outer
                break
            inner, step = outer, step * 2
        if found is None:
            out.append(bound)
            continue
        root = optimize.brentq(excess, min(inner, found), max(inner, found), xtol=1e-12, rtol=1e-12)
        out.append(theta_of(root))
    return (min(out), max(out))
