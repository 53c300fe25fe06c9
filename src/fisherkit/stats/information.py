"""Fisher information of any family by automatic differentiation.

For one observation x ~ p(· | θ), with score s(x; θ) = ∇_θ log p(x | θ),

    I(θ) = E[s sᵀ]              ("score" form: covariance of the score, since E[s] = 0)
         = −E[∇²_θ log p(x | θ)]   ("hessian" form; equal under the usual regularity conditions).

Scores and Hessians come from ``torch.func.jacfwd`` in float64 (forward mode over the p
parameters, batched over all points). The expectation is computed

* ``"enumerate"`` (discrete support): exactly, summing over the support; an infinite support is
  truncated where the remaining tail mass is below 1e-14;
* ``"quadrature"`` (continuous support): the trapezoid rule in an unconstrained coordinate u
  (x = u, lo + eᵘ or lo + (hi−lo)σ(u)), centred at the mode of the density in u with step 1/20 of
  its Laplace scale c, extended until the density is e⁻⁵⁰ of its peak. For smooth, fast-decaying
  integrands on ℝ the trapezoid rule converges geometrically (≈ 1e-12 here). A tail that is not
  down to e⁻⁵⁰ within 400 c is heavy (a power law, e.g. Cauchy): then the substitution
  u = u* + c·sinh(t) maps the whole line to one where that tail decays exponentially, and the
  trapezoid rule in t converges geometrically again (≈ 1e-14 for Cauchy and Student-t);
* ``"mc"``: seeded Monte Carlo with ``mc_samples`` draws (standard error ∝ 1/√mc_samples).

``"auto"`` picks enumeration or quadrature from the support. The density must be normalised: a
total mass differing from 1 by more than 1e-6 raises ``FisherkitError``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import optimize

from ..errors import FisherkitError, NonFiniteError
from .family import DTYPE, Family

TAIL_MASS = 1e-14
MAX_POINTS = 2_000_000
LIGHT_TAIL_SCALES = 400.0  # a tail not down to e^-50 of the peak within 400 Laplace scales is heavy


def score_and_hessian(family: Family, x, theta) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-observation log p (N,), score (N, p) and Hessian (N, p, p), float64, by autodiff."""
    x = torch.as_tensor(np.asarray(x, dtype=float), dtype=DTYPE)
    theta = torch.as_tensor(np.asarray(theta, dtype=float), dtype=DTYPE)

    if getattr(family, "elementwise_params", False):
        try:
            out = _score_and_hessian_elementwise(family, x, theta)
        except (RuntimeError, TypeError, IndexError):  # logpdf does not broadcast per-observation θ
            out = None
        if out is not None and out[0].shape == (len(x),):
            return out

    def f(t):
        return family.logpdf(x, t)

    with torch.no_grad():
        logp = f(theta)
    try:
        score = torch.func.jacfwd(f)(theta)
        hess = torch.func.jacfwd(torch.func.jacfwd(f))(theta)
    except (RuntimeError, NotImplementedError):  # an op without forward-mode AD: reverse per point
        single = lambda t, xi: family.logpdf(xi.unsqueeze(0), t)[0]
        score = torch.func.vmap(torch.func.grad(single), in_dims=(None, 0))(theta, x)
        hess = torch.func.vmap(torch.func.hessian(single), in_dims=(None, 0))(theta, x)
    return logp, score.reshape(len(logp), -1), hess.reshape(len(logp), theta.numel(), theta.numel())


def _score_and_hessian_elementwise(family, x, theta):
    """Fast path for families whose logpdf is elementwise in θ's entries: give every observation
    its own copy of θ (shape (p, N)), so one backward pass yields all per-observation scores and p
    more yield the Hessians (plain autograd; torch.func's per-op overhead dominates small problems)."""
    p, n = theta.numel(), x.shape[0]
    tb = theta[:, None].expand(p, n).clone().requires_grad_(True)
    logp = family.logpdf(x, tb)
    (g,) = torch.autograd.grad(logp.sum(), tb, create_graph=True)
    rows = []
    for j in range(p):
        if g[j].requires_grad:
            (hj,) = torch.autograd.grad(g[j].sum(), tb, retain_graph=True, allow_unused=True, materialize_grads=True)
        else:
            hj = torch.zeros_like(tb)
        rows.append(hj)
    hess = torch.stack(rows).permute(2, 0, 1)  # (N, p, p)
    return logp.detach(), g.detach().T.contiguous(), hess.detach()


# ------------------------------------------------------------------ expectation rules


def enumeration_rule(family: Family, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Support points and their probabilities, truncated where the tail mass < 1e-14."""
    if hasattr(family, "support_points"):
        pts = family.support_points(theta)
        return pts, np.exp(family.log_prob_unchecked(pts, theta))
    sup = family.support
    lo, hi = sup.low, sup.high
    size = 256
    while True:
        stop = hi if hi - lo < size else lo + size - 1
        pts = np.arange(lo, stop + 1, dtype=float)
        logp = family.log_prob_unchecked(pts, theta)
        mass = np.exp(logp).sum()
        if stop >= hi:
            return pts, np.exp(logp)
        # geometric bound on the tail beyond the last point, Σ_{j≥1} p_K r^j = p_K r / (1 − r),
        # with r = p_K / p_{K−1} (valid once the pmf decays at a non-increasing ratio)
        log_r = logp[-1] - logp[-2]
        if log_r < 0 and abs(mass - 1) < 1e-9:
            r = math.exp(log_r)
            if math.exp(logp[-1]) * r / (1 - r) < TAIL_MASS:
                return pts, np.exp(logp)
        if size >= MAX_POINTS:
            raise FisherkitError(
                f"{family.name}: enumerating {size} support points left tail mass {1 - mass:.3g} "
                "(is the log-density normalised?); use method='mc'"
            )
        size *= 4


def _u_map(lo: float, hi: float):
    """x(u) and log|dx/du| for the coordinate that maps ℝ onto (lo, hi)."""
    if math.isinf(lo) and math.isinf(hi):
        return (lambda u: u), (lambda u: torch.zeros_like(u))
    if math.isinf(hi):
        return (lambda u: lo + torch.exp(u)), (lambda u: u)
    if math.isinf(lo):
        return (lambda u: hi - torch.exp(u)), (lambda u: u)
    w = hi - lo
    return (
        lambda u: lo + w * torch.sigmoid(u),
        lambda u: math.log(w) + torch.nn.functional.logsigmoid(u) + torch.nn.functional.logsigmoid(-u),
    )


def _walk(logw, step: float, limit: float) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Trapezoid nodes k·step (k ∈ ℤ) of a log-weight function, walked outwards from 0 in blocks
    of 512 until the weight is e⁻⁵⁰ of its peak on both sides. Returns (nodes, log-weights,
    finished): ``finished`` is False when a side reached |k·step| > ``limit`` first."""
    with torch.no_grad():
        nodes = [torch.zeros(1, dtype=DTYPE)]
        values = [logw(nodes[0])]
        peak = float(values[0][0])
        finished = True
        for direction in (-1.0, 1.0):
            k = 1
            while True:
                block = direction * step * torch.arange(k, k + 512, dtype=DTYPE)
                lb = logw(block)
                nodes.append(block)
                values.append(lb)
                peak = max(peak, float(lb.max()))
                k += 512
                if not (lb > peak - 50).any():
                    break
                if k * step > limit or k > MAX_POINTS // 2:
                    finished = False
                    break
    return torch.cat(nodes), torch.cat(values), finished


def quadrature_rule(family: Family, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nodes x_i and weights w_i ≈ p(x_i) dx for E[f(x)] ≈ Σ w_i f(x_i).

    The trapezoid rule in the unconstrained coordinate u (x = u, lo + eᵘ or a logit), centred at the
    mode u* of the density of u with step c/20, c its Laplace scale. Light tails end within 400 c.
    A heavier tail (a power law such as Cauchy's 1/x², which at |x| = 2,000 still leaves 3e-4 of the
    mass) switches to the substitution u = u* + c·sinh(t) over the whole line, step 1/20 in t:
    p(x) ∝ |x|^{−1−α} becomes ∝ e^{−α|t|} in t, which the trapezoid rule integrates geometrically fast.
    """
    x_of, logjac = _u_map(family.support.low, family.support.high)
    t = torch.as_tensor(theta, dtype=DTYPE)

    def g(u: torch.Tensor) -> torch.Tensor:  # log density of u
        with np.errstate(all="ignore"):
            out = family.logpdf(x_of(u), t) + logjac(u)
        return torch.where(torch.isfinite(out), out, torch.full_like(out, -math.inf))

    with torch.no_grad():
        grid = torch.arange(-60.0, 60.0 + 1e-9, 0.25, dtype=DTYPE)
        gg = g(grid)
    if not torch.isfinite(gg).any():
        raise FisherkitError(f"{family.name}: the log-density is -inf everywhere on the support")
    u0 = float(grid[int(torch.argmax(gg))])

    def neg(u):
        ut = torch.tensor(np.asarray(u, dtype=float).reshape(1), dtype=DTYPE, requires_grad=True)
        v = -g(ut)[0]
        if not torch.isfinite(v):
            return math.inf, np.zeros(1)
        (d,) = torch.autograd.grad(v, ut)
        return float(v.detach()), d.numpy().astype(float)

    res = optimize.minimize(neg, np.array([u0]), jac=True, method="BFGS")
    umode = float(res.x[0]) if np.isfinite(res.fun) and -res.fun >= float(gg.max()) else u0
    um = torch.tensor([umode], dtype=DTYPE, requires_grad=True)
    (d1,) = torch.autograd.grad(g(um)[0], um, create_graph=True)
    (d2,) = torch.autograd.grad(d1[0], um)
    curv = -float(d2[0])
    scale = 1.0 / math.sqrt(curv) if np.isfinite(curv) and curv > 0 else 1.0

    step = scale / 20.0
    s, ls, finished = _walk(lambda s: g(umode + s), step, LIGHT_TAIL_SCALES * scale)
    u, logw = umode + s, ls + math.log(step)
    if not finished:  # a heavy tail: integrate over the whole line in t, u = u* + c sinh(t)
        step = 1.0 / 20.0
        with np.errstate(all="ignore"):
            s, ls, finished = _walk(
                lambda s: g(umode + scale * torch.sinh(s)) + math.log(scale) + torch.log(torch.cosh(s)), step, 700.0
            )
        if not finished:
            raise FisherkitError(
                f"{family.name}: the density's tails are too heavy to integrate at θ = {theta.tolist()} "
                "(still above e^-50 of the peak at |t| = 700 after the substitution u = c·sinh(t)); "
                "use method='mc'"
            )
        u, logw = umode + scale * torch.sinh(s), ls + math.log(step)
        mass = float(torch.exp(logw[torch.isfinite(logw)]).sum())
        if abs(mass - 1) > 1e-6 and mass < 1:
            raise FisherkitError(
                f"{family.name}: the density's tails are too heavy to integrate at θ = {theta.tolist()}: "
                f"only {mass:.6g} of the mass lies where x is representable in float64 (|x| < 1e308); "
                "use method='mc' (or check that the log-density is normalised)"
            )
    keep = torch.isfinite(logw) & torch.isfinite(u)
    with torch.no_grad():
        x = x_of(u[keep]).numpy()
    inside = family.support.contains(x) & np.isfinite(x)
    return x[inside], torch.exp(logw[keep]).numpy()[inside]


def _check_mass(family: Family, weights: np.ndarray, method: str) -> None:
    total = float(np.sum(weights))
    if abs(total - 1) > 1e-6:
        raise FisherkitError(
            f"{family.name}: the density sums/integrates to {total:.6g}, not 1, under method='{method}' "
            "(is the log-density normalised, with the right support?)"
        )


def _check_mc_samples(mc_samples) -> int:
    """``mc_samples`` as a positive int; whole floats (1e5) and numpy integers are accepted."""
    ok = isinstance(mc_samples, (int, np.integer, float, np.floating)) and not isinstance(mc_samples, (bool, np.bool_))
    if ok:
        value = float(mc_samples)
        ok = math.isfinite(value) and value == int(value) and value >= 1
    if not ok:
        raise FisherkitError(
            f"mc_samples must be a positive integer (the number of Monte Carlo draws), got {mc_samples!r}; "
            "e.g. mc_samples=100_000"
        )
    return int(mc_samples)


def fisher_information(
    family: Family,
    params,
    method: str = "auto",
    form: str = "score",
    mc_samples: int = 200_000,
    seed: int | None = 0,
):
    """Fisher information of one observation, I(θ) (p × p), by autodiff.

    ``form``: ``"score"`` (E[s sᵀ]), ``"hessian"`` (−E[∇² log p]) or ``"both"`` (a tuple).
    ``method``: ``"auto"`` | ``"enumerate"`` | ``"quadrature"`` | ``"mc"`` (see module docstring);
    ``mc_samples`` (a positive integer) and ``seed`` are used by ``"mc"`` only.

    >>> import fisherkit as fk
    >>> fk.stats.fisher_information(fk.stats.Poisson(), [4.0]).round(12)   # 1/λ
    array([[0.25]])
    """
    theta = family.check_params(params)
    if form not in ("score", "hessian", "both"):
        raise FisherkitError(f"form must be 'score', 'hessian' or 'both', got {form!r}")
    mc_samples = _check_mc_samples(mc_samples)
    if method == "auto":
        method = "enumerate" if family.support.discrete else "quadrature"
    if family.on_boundary(theta):
        raise FisherkitError(
            f"{family.name}: θ = {theta.tolist()} is on the boundary of the parameter space "
            f"({', '.join(family.on_boundary(theta))}); the Fisher information diverges or is undefined there"
        )
    if method == "enumerate":
        if not family.support.discrete:
            raise FisherkitError(f"{family.name} has a continuous support; use method='quadrature' or 'mc'")
        x, w = enumeration_rule(family, theta)
        _check_mass(family, w, method)
    elif method == "quadrature":
        if family.support.discrete or family.event_shape:
            raise FisherkitError(f"{family.name}: quadrature needs a scalar continuous support; use 'enumerate'/'mc'")
        x, w = quadrature_rule(family, theta)
        _check_mass(family, w, method)
    elif method == "mc":
        x = np.asarray(family.sample(theta, mc_samples, rng=np.random.default_rng(seed)), dtype=float)
        w = np.full(len(x), 1.0 / len(x))
    else:
        raise FisherkitError(f"method must be 'auto', 'enumerate', 'quadrature' or 'mc', got {method!r}")
    _, s, hess = score_and_hessian(family, x, theta)
    wt = torch.as_tensor(w, dtype=DTYPE)
    by_score = torch.einsum("n,ni,nj->ij", wt, s, s).numpy()
    by_hessian = -torch.einsum("n,nij->ij", wt, hess).numpy()
    if not (np.isfinite(by_score).all() and np.isfinite(by_hessian).all()):
        raise NonFiniteError(f"{family.name}: the Fisher information at θ = {theta.tolist()} is not finite")
    if form == "score":
        return by_score
    if form == "hessian":
        return by_hessian
    return by_score, by_hessian


def cramer_rao_bound(family: Family, params, n: int = 1) -> np.ndarray:
    """Cramér–Rao lower bound (n I(θ))⁻¹ on the covariance of an unbiased estimator from n draws."""
    return np.linalg.inv(n * family.fisher_information(params))
