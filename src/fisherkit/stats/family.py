"""The ``Family`` interface: a parametric model p(x | θ) with θ ∈ Θ ⊂ ℝᵖ.

A family knows

* its log-density ``logpdf(x, θ)`` written with torch operations (so the score
  s(x; θ) = ∇_θ log p(x | θ) and the Hessian ∇²_θ log p(x | θ) come from autodiff),
* its ``support`` (which data are possible) and the ``bounds`` of each parameter,
* a bijection between Θ and ℝᵖ (``to_unconstrained`` / ``from_unconstrained``) used by the
  numerical optimiser and the profile likelihood,
* optionally a closed-form Fisher information I(θ) = E[s sᵀ] (per observation), a closed-form MLE
  and a sampler.

Conventions: parameters are a 1-D float64 array in ``param_names`` order; ``fisher_information``
is the information of *one* observation, so n i.i.d. observations carry n·I(θ).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from ..errors import FisherkitError, NonFiniteError, ShapeError, SupportError

DTYPE = torch.float64


class Support:
    """Where the data of a family live.

    ``Support.integers(low, high)`` is the lattice {low, …, high} (``high`` may be ∞),
    ``Support.real(low, high)`` the open interval (low, high) (either end may be infinite).

    >>> Support.integers(0, 10).describe()
    'integers 0..10'
    """

    def __init__(self, discrete: bool, low: float, high: float):
        if not low < high:
            raise FisherkitError(f"support needs low < high, got low={low}, high={high}")
        self.discrete = bool(discrete)
        self.low = float(low)
        self.high = float(high)

    @classmethod
    def integers(cls, low: float = 0, high: float = math.inf) -> "Support":
        return cls(True, low, high)

    @classmethod
    def real(cls, low: float = -math.inf, high: float = math.inf) -> "Support":
        return cls(False, low, high)

    @classmethod
    def parse(cls, spec: "str | Support | tuple") -> "Support":
        """Accept a ``Support``, a name (``"real"``, ``"positive"``, ``"unit_interval"``,
        ``"nonnegative_integers"``, ``"positive_integers"``, ``"binary"``) or a
        ``(low, high, discrete)`` tuple."""
        if isinstance(spec, Support):
            return spec
        if isinstance(spec, tuple):
            low, high, *rest = spec
            return cls(bool(rest[0]) if rest else False, low, high)
        names = {
            "real": (False, -math.inf, math.inf),
            "positive": (False, 0.0, math.inf),
            "unit_interval": (False, 0.0, 1.0),
            "nonnegative_integers": (True, 0, math.inf),
            "positive_integers": (True, 1, math.inf),
            "binary": (True, 0, 1),
        }
        if spec not in names:
            raise FisherkitError(f"unknown support {spec!r}; use one of {sorted(names)} or a Support")
        return cls(*names[spec])

    def describe(self) -> str:
        if self.discrete:
            hi = "inf" if math.isinf(self.high) else f"{self.high:g}"
            return f"integers {self.low:g}..{hi}"
        return f"the interval ({self.low:g}, {self.high:g})"

    def contains(self, x: np.ndarray) -> np.ndarray:
        """Elementwise membership (boolean array of ``x``'s shape)."""
        if self.discrete:
            return (x == np.round(x)) & (x >= self.low) & (x <= self.high)
        return (x > self.low) & (x < self.high)


# ---------------------------------------------------------------- parameter transforms


def _to_u(theta: np.ndarray, bounds) -> np.ndarray:
    """Map θ (each inside its bounds) to ℝᵖ: identity, log(θ−lo), log(hi−θ) or scaled logit."""
    out = np.empty_like(theta, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        for j, (t, (lo, hi)) in enumerate(zip(theta, bounds)):
            if math.isinf(lo) and math.isinf(hi):
                out[j] = t
            elif math.isinf(hi):
                out[j] = np.log(t - lo)
            elif math.isinf(lo):
                out[j] = np.log(hi - t)
            else:
                q = (t - lo) / (hi - lo)
                out[j] = np.log(q) - np.log1p(-q)
    return out


def _from_u(u: torch.Tensor, bounds) -> torch.Tensor:
    """Inverse of :func:`_to_u`, in torch so it can be differentiated."""
    parts = []
    for j, (lo, hi) in enumerate(bounds):
        v = u[j]
        if math.isinf(lo) and math.isinf(hi):
            parts.append(v)
        elif math.isinf(hi):
            parts.append(lo + torch.exp(v))
        elif math.isinf(lo):
            parts.append(hi - torch.exp(v))
        else:
            parts.append(lo + (hi - lo) * torch.sigmoid(v))
    return torch.stack(parts)


class Family:
    """Base class of the parametric families. Subclasses set ``name``, ``param_names``,
    ``bounds``, ``support`` and implement ``logpdf``; the rest has defaults."""

    name: str = "family"
    param_names: tuple[str, ...] = ()
    bounds: tuple[tuple[float, float], ...] = ()
    support: Support = Support.real()
    event_shape: tuple[int, ...] = ()
    #: True when ``logpdf`` only combines θ's entries elementwise (θ[0], θ[1], …), so that each
    #: entry may be an (N,) tensor; enables a faster per-observation score/Hessian path.
    elementwise_params: bool = False

    # -- to be implemented ---------------------------------------------------------------
    def logpdf(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """log p(x | θ) for a batch x of shape (N, *event_shape); returns shape (N,)."""
        raise NotImplementedError

    def closed_form_fisher(self, theta: np.ndarray) -> np.ndarray | None:
        """I(θ) per observation in closed form, or ``None`` (then autodiff is used)."""
        return None

    def closed_form_mle(self, data: np.ndarray) -> np.ndarray | None:
        """The MLE in closed form (may lie on the boundary), or ``None``."""
        return None

    def initial_params(self, data: np.ndarray) -> np.ndarray | None:
        """A starting point for numerical maximisation (e.g. by moments), or ``None``."""
        return None

    def _sample(self, theta: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
        raise FisherkitError(f"{self.name} has no sampler; pass sampler= to Family.from_logpdf")

    # -- shared behaviour ----------------------------------------------------------------
    @property
    def num_params(self) -> int:
        return len(self.param_names)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def check_params(self, params) -> np.ndarray:
        """θ as a float64 array of length p, inside the parameter space (closed bounds allowed)."""
        theta = np.atleast_1d(np.asarray(params, dtype=float)).ravel()
        if theta.shape != (self.num_params,):
            raise ShapeError(
                f"{self.name} has {self.num_params} parameter(s) {list(self.param_names)}, "
                f"got {theta.size} value(s)"
            )
        for j, (t, (lo, hi)) in enumerate(zip(theta, self.bounds)):
            if not np.isfinite(t):
                raise NonFiniteError(f"{self.name}: parameter {self.param_names[j]} is {t}")
            if not lo <= t <= hi:
                raise FisherkitError(
                    f"{self.name}: parameter {self.param_names[j]}={t:g} is outside [{lo:g}, {hi:g}]"
                )
        return theta

    def in_support(self, x: np.ndarray) -> np.ndarray:
        """Boolean mask (N,) of the rows of x that are possible observations."""
        return self.support.contains(x)

    def support_hint(self) -> str:
        return self.support.describe()

    def check_data(self, data) -> np.ndarray:
        """Validate observations and return them as float64 of shape (N, *event_shape).

        Raises ``FisherkitError`` (empty or non-numeric), ``ShapeError``, ``NonFiniteError``
        (NaN/inf, naming the first index) or ``SupportError`` (naming value and index).
        """
        if isinstance(data, torch.Tensor):
            data = data.detach().cpu().numpy()
        try:
            x = np.asarray(data, dtype=float)
        except (TypeError, ValueError) as e:
            raise FisherkitError(f"{self.name}: data must be numbers ({e})") from None
        if not self.event_shape:
            if x.ndim > 1 and x.size == max(x.shape):
                x = x.ravel()
            x = np.atleast_1d(x)
            if x.ndim != 1:
                raise ShapeError(f"{self.name}: expected a 1-D array of observations, got shape {x.shape}")
        else:
            x = np.atleast_2d(x) if x.ndim == 1 and x.size else x
            if x.ndim != 2 or x.shape[1:] != self.event_shape:
                raise ShapeError(
                    f"{self.name}: expected observations of shape (N, {self.event_shape[0]}), got {x.shape}"
                )
        if x.shape[0] == 0:
            raise FisherkitError(f"{self.name}: no observations (empty data)")
        rows = x.reshape(x.shape[0], -1)
        bad = ~np.isfinite(rows).all(axis=1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise NonFiniteError(
                f"{self.name}: observation at index {i} is {x[i].tolist()} (not finite); "
                f"{int(bad.sum())} non-finite observation(s) in total"
            )
        ok = self.in_support(x)
        if not ok.all():
            i = int(np.flatnonzero(~ok)[0])
            raise SupportError(
                f"{self.name}: value {x[i].tolist()} at index {i} is outside the support "
                f"({self.support_hint()}); {int((~ok).sum())} such value(s) in total"
            )
        return x

    def to_unconstrained(self, theta: np.ndarray) -> np.ndarray:
        return _to_u(np.asarray(theta, dtype=float), self.bounds)

    def from_unconstrained(self, u: torch.Tensor) -> torch.Tensor:
        return _from_u(u, self.bounds)

    def on_boundary(self, theta: np.ndarray) -> list[str]:
        """Names of the parameters sitting on a bound of Θ (where I(θ) may diverge)."""
        return [n for n, t, (lo, hi) in zip(self.param_names, theta, self.bounds) if t <= lo or t >= hi]

    def fisher_information(self, params) -> np.ndarray:
        """Fisher information of one observation, I(θ) = E[s sᵀ] = −E[∇² log p], shape (p, p).

        Closed form when the family has one, else computed by autodiff
        (:func:`fisherkit.stats.fisher_information`).

        >>> from fisherkit.stats import Bernoulli
        >>> Bernoulli().fisher_information(0.5)   # 1 / (p (1 − p))
        array([[4.]])
        """
        theta = self.check_params(params)
        with np.errstate(divide="ignore", invalid="ignore"):
            closed = self.closed_form_fisher(theta)
        if closed is not None:
            return np.asarray(closed, dtype=float).reshape(self.num_params, self.num_params)
        from .information import fisher_information

        return fisher_information(self, theta)

    def log_prob(self, data, params) -> np.ndarray:
        """log p(x_i | θ) for each observation (numpy in, numpy out)."""
        x = self.check_data(data)
        theta = torch.as_tensor(self.check_params(params), dtype=DTYPE)
        with torch.no_grad():
            return self.logpdf(torch.as_tensor(x, dtype=DTYPE), theta).numpy()

    def log_prob_unchecked(self, x: np.ndarray, theta: np.ndarray) -> np.ndarray:
        """log p(x_i | θ) without validating x or θ (used on support points)."""
        with torch.no_grad(), np.errstate(all="ignore"):
            out = self.logpdf(torch.as_tensor(x, dtype=DTYPE), torch.as_tensor(theta, dtype=DTYPE))
        return out.numpy()

    def loglik(self, data, params) -> float:
        """ℓ(θ) = Σ_i log p(x_i | θ)."""
        return float(self.log_prob(data, params).sum())

    def sample(self, params, size: int, rng=None):
        """Draw ``size`` i.i.d. observations.

        ``rng``: an int seed, a ``numpy.random.Generator`` (returns numpy) or a
        ``torch.Generator`` (returns a float64 torch tensor, seeded from it).
        """
        theta = self.check_params(params)
        if isinstance(rng, torch.Generator):
            seed = int(torch.randint(0, 2**62, (1,), generator=rng).item())
            return torch.as_tensor(self._sample(theta, int(size), np.random.default_rng(seed)), dtype=DTYPE)
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        return np.asarray(self._sample(theta, int(size), gen), dtype=float)

    @classmethod
    def from_logpdf(
        cls,
        logpdf,
        param_names: Sequence[str],
        support="real",
        bounds: Sequence[tuple[float, float]] | None = None,
        sampler=None,
        name: str = "custom",
    ) -> "Family":
        """Define a family from its log-density alone; see :class:`fisherkit.stats.custom.CustomFamily`."""
        from .custom import CustomFamily

        return CustomFamily(logpdf, param_names, support=support, bounds=bounds, sampler=sampler, name=name)
