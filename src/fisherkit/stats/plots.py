"""Plots of the log-likelihood and its Fisher quadratic approximation (matplotlib, Agg backend).

Near the MLE, ℓ(θ) − ℓ(θ̂) ≈ −½ (θ − θ̂)² / var(θ̂) with var(θ̂) = [n I(θ̂)]⁻¹ (the Fisher quadratic
approximation). More data ⇒ larger n I ⇒ a narrower parabola: the likelihood "sharpens" like 1/√n.
For a family with several parameters the curve is the profile log-likelihood of one parameter and
var is the corresponding diagonal entry of the covariance.
"""

from __future__ import annotations

import warnings

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import stats

from .family import Family
from .mle import BoundaryWarning, fit
from .optimize import profile_loglik


def _curve(family, res, j, grid):
    out, start = [], res.params
    for v in grid:
        ll, th = profile_loglik(family, res.data, j, float(v), start)
        if np.isfinite(ll):
            start = th
        out.append(ll - res.loglik)
    return np.array(out)


def plot_loglik(family: Family, data, compare=None, param: int | str = 0, alpha: float = 0.05,
                labels=None, ax=None) -> Figure:
    """Relative (profile) log-likelihood ℓ_p(θ_j) − ℓ(θ̂) with its Fisher quadratic approximation.

    ``compare``: an optional ``(family, data)`` pair, or a list of them, drawn on the same axes (e.g.
    6/10 against 60/100 successes to show the sharpening). A horizontal line marks −χ²_{1,1−α}/2:
    where a curve crosses it are the ends of its profile interval. Returns the Figure.

    >>> import fisherkit as fk
    >>> fig = fk.stats.plots.plot_loglik(fk.stats.Binomial(10), [6],
    ...                                  compare=(fk.stats.Binomial(100), [60]))
    >>> fig.savefig("binomial.png")  # doctest: +SKIP
    """
    pairs = [(family, data)]
    if compare is not None:
        pairs += list(compare) if isinstance(compare, list) else [compare]
    j = family.param_names.index(param) if isinstance(param, str) else int(param)
    fits = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BoundaryWarning)
        for fam, d in pairs:
            fits.append(fit(fam, d))
    crit = stats.chi2.ppf(1 - alpha, 1) / 2
    lo_b, hi_b = family.bounds[j]
    lows, highs = [], []
    for res in fits:
        ci = res.conf_int(alpha, "profile")[j]
        width = max(ci[1] - ci[0], 1e-12)
        lows.append(ci[0] - 0.6 * width)
        highs.append(ci[1] + 0.6 * width)
    eps = 1e-9 * max(1.0, abs(hi_b - lo_b) if np.isfinite(hi_b - lo_b) else 1.0)
    grid = np.linspace(max(min(lows), lo_b + eps), min(max(highs), hi_b - eps), 121)

    if ax is None:
        fig = Figure(figsize=(6.4, 4.2))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    name = family.param_names[j]
    for k, ((fam, _), res) in enumerate(zip(pairs, fits)):
        color = f"C{k}"
        label = labels[k] if labels is not None else f"{fam.name}, n = {res.n}"
        rel = _curve(fam, res, j, grid)
        ax.plot(grid, rel, color=color, lw=2, label=f"log-likelihood: {label}")
        var = res.cramer_rao[j, j] if not res.boundary else np.nan
        if np.isfinite(var) and var > 0:
            quad = -0.5 * (grid - res.params[j]) ** 2 / var
            ax.plot(grid, quad, color=color, ls="--", lw=1.5,
                    label=f"Fisher quadratic, se = {np.sqrt(var):.3g}")
        ax.axvline(res.params[j], color=color, lw=0.8, alpha=0.6)
    ax.axhline(-crit, color="0.4", lw=1, ls=":", label=f"−χ²₁({1 - alpha:g})/2: profile {1 - alpha:.0%} interval")
    ax.set_ylim(-4 * crit, 0.3 * crit)
    ax.set_xlabel(name)
    ax.set_ylabel("ℓ(θ) − ℓ(θ̂)" if family.num_params == 1 else f"profile ℓ({name}) − ℓ(θ̂)")
    ax.set_title(f"{family.name}: log-likelihood and its Fisher quadratic approximation", fontsize=10)
    ax.legend(fontsize=7, loc="lower center")
    fig.tight_layout()
    return fig
