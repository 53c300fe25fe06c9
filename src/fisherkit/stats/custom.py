"""A family defined by its log-density alone.

``Family.from_logpdf(logpdf, param_names, support=..., bounds=...)`` wraps a function
``logpdf(x, *params)`` written with torch operations (elementwise in ``x``). Everything else is
derived: the Fisher information by autodiff with enumeration/quadrature
(:func:`fisherkit.stats.fisher_information`), the MLE by numerical optimisation in the
unconstrained coordinates implied by ``bounds`` (:mod:`fisherkit.stats.optimize`), intervals by
profiling. Sampling needs a ``sampler(params, size, rng)``.

Example — the Rayleigh distribution, p(x | s) = x/s² exp(−x²/(2s²)), x > 0, I(s) = 4/s²:

>>> import torch, fisherkit as fk
>>> rayleigh = fk.stats.Family.from_logpdf(
...     lambda x, s: torch.log(x) - 2 * torch.log(s) - x**2 / (2 * s**2),
...     ["s"], support="positive", bounds=[(0, float("inf"))], name="Rayleigh")
>>> float(rayleigh.fisher_information([2.0])[0, 0].round(10))
1.0
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import FisherkitError
from .family import Family, Support


class CustomFamily(Family):
    """See the module docstring. ``bounds`` default to (−∞, ∞) for every parameter.

    Scores and Hessians first try per-observation copies of θ (each parameter an (N,) tensor,
    which any elementwise torch code handles) and fall back to ``torch.func`` otherwise."""

    elementwise_params = True

    def __init__(
        self,
        logpdf: Callable,
        param_names: Sequence[str],
        support="real",
        bounds: Sequence[tuple[float, float]] | None = None,
        sampler: Callable | None = None,
        name: str = "custom",
    ):
        if not callable(logpdf):
            raise FisherkitError("logpdf must be a function logpdf(x, *params) using torch operations")
        self._logpdf = logpdf
        self.param_names = tuple(str(n) for n in param_names)
        if not self.param_names:
            raise FisherkitError("a family needs at least one parameter name")
        if bounds is None:
            bounds = [(-math.inf, math.inf)] * len(self.param_names)
        bounds = tuple((float(lo), float(hi)) for lo, hi in bounds)
        if len(bounds) != len(self.param_names):
            raise FisherkitError(
                f"got {len(bounds)} bounds for {len(self.param_names)} parameters {list(self.param_names)}"
            )
        for n, (lo, hi) in zip(self.param_names, bounds):
            if not lo < hi:
                raise FisherkitError(f"bounds of {n} must satisfy low < high, got ({lo}, {hi})")
        self.bounds = bounds
        self.support = Support.parse(support)
        self._sampler = sampler
        self.name = name

    def __repr__(self):
        return f"CustomFamily({self.name!r}, params={list(self.param_names)})"

    def logpdf(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        out = self._logpdf(x, *theta.unbind())
        if not isinstance(out, torch.Tensor):
            raise FisherkitError(f"{self.name}: logpdf must return a torch tensor, got {type(out).__name__}")
        return out.expand(x.shape[:1]) if out.ndim == 0 else out

    def initial_params(self, data):
        """Start the optimiser at the 'centre' of each parameter's range."""
        start = []
        for lo, hi in self.bounds:
            if math.isinf(lo) and math.isinf(hi):
                start.append(0.0)
            elif math.isinf(hi):
                start.append(lo + 1.0)
            elif math.isinf(lo):
                start.append(hi - 1.0)
            else:
                start.append((lo + hi) / 2)
        return np.array(start)

    def _sample(self, theta, size, rng):
        if self._sampler is None:
            return super()._sample(theta, size, rng)
        return np.asarray(self._sampler(theta, size, rng), dtype=float)
