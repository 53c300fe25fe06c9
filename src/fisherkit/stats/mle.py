"""Maximum-likelihood fitting with Fisher-information standard errors.

For i.i.d. data x_1 … x_n, θ̂ = argmax ℓ(θ), ℓ(θ) = Σ_i log p(x_i | θ), and asymptotically
θ̂ ≈ N(θ, cov). The covariance is an explicit choice, ``cov_type``:

==============  =====================================  =====================================
cov_type        cov                                    notes
==============  =====================================  =====================================
"expected"      [n I(θ̂)]⁻¹                             default; I from the closed form
"observed"      J⁻¹, J = −Σ_i ∇² log p(x_i | θ̂)         observed information (Efron–Hinkley)
"opg"           [Σ_i s_i s_iᵀ]⁻¹                        outer product of scores (BHHH)
"sandwich"      J⁻¹ (Σ_i s_i s_iᵀ) J⁻¹                   robust to misspecification (Huber–White)
==============  =====================================  =====================================

``cramer_rao`` is [n I(θ̂)]⁻¹, the Cramér–Rao bound on the covariance of unbiased estimators,
evaluated at θ̂. When θ̂ lies on the boundary of Θ (e.g. p̂ = 0 or 1) I(θ̂) diverges: ``fit`` warns
(``BoundaryWarning``), standard errors are NaN (never 0), Wald intervals raise, and
``conf_int(method="profile")`` still gives a one-sided interval.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..errors import FisherkitError
from .family import Family
from .information import score_and_hessian
from .intervals import _check_alpha, profile_interval, wald_interval
from .optimize import numerical_mle

COV_TYPES = ("expected", "observed", "opg", "sandwich")


class BoundaryWarning(UserWarning):
    """The MLE is on the boundary of the parameter space; Fisher information diverges there."""


def _inv(m: np.ndarray) -> np.ndarray:
    if not np.isfinite(m).all():
        return np.full_like(m, np.nan)
    try:
        return np.linalg.inv(m)
    except np.linalg.LinAlgError:
        return np.full_like(m, np.nan)


class FitResult:
    """The result of :func:`fit`: estimates, information matrices, covariance and intervals."""

    def __init__(self, family, data, params, loglik, cov_type, expected, boundary):
        self.family: Family = family
        self.data = data
        self.params = params
        self.param_names = family.param_names
        self.loglik = loglik
        self.n = len(data)
        self.cov_type = cov_type
        self.expected_information = expected
        self.boundary = boundary
        self._score_stats = None
        self.cramer_rao = _inv(expected)
        if boundary:
            self.cov = np.full((len(params), len(params)), np.nan)
        elif cov_type == "expected":
            self.cov = self.cramer_rao
        elif cov_type == "observed":
            self.cov = _inv(self.observed_information)
        elif cov_type == "opg":
            self.cov = _inv(self.opg_information)
        else:
            j_inv = _inv(self.observed_information)
            self.cov = j_inv @ self.opg_information @ j_inv
        with np.errstate(invalid="ignore"):
            self.se = np.sqrt(np.diag(self.cov))

    def _scores(self) -> tuple[np.ndarray, np.ndarray]:
        """(J, Σ s sᵀ) by autodiff, computed on first use (cov_type="expected" never needs them)."""
        if self._score_stats is None:
            p = len(self.params)
            if self.boundary:
                self._score_stats = (np.full((p, p), np.nan), np.full((p, p), np.nan))
            else:
                _, s, h = score_and_hessian(self.family, self.data, self.params)
                self._score_stats = (-h.sum(0).numpy(), (s.T @ s).numpy())
        return self._score_stats

    @property
    def observed_information(self) -> np.ndarray:
        """J = −Σ_i ∇² log p(x_i | θ̂) (p × p); NaN on the boundary."""
        return self._scores()[0]

    @property
    def opg_information(self) -> np.ndarray:
        """Σ_i s_i s_iᵀ at θ̂, the outer product of the scores (p × p)."""
        return self._scores()[1]

    def conf_int(self, alpha: float = 0.05, method: str = "wald") -> np.ndarray:
        """(p, 2) array of 1−α intervals, ``method="wald"`` or ``"profile"``.

        >>> import fisherkit as fk
        >>> fk.stats.fit(fk.stats.Binomial(10), [6]).conf_int(method="profile").round(3)
        array([[0.3  , 0.854]])
        """
        _check_alpha(alpha)
        if method == "wald":
            if self.boundary:
                raise FisherkitError(
                    f"the MLE is on the boundary ({', '.join(self.boundary)}): the Fisher information "
                    "diverges there, so the Wald interval is undefined; use method='profile'"
                )
            return wald_interval(self.params, self.se, alpha)
        if method == "profile":
            rows = [
                profile_interval(self.family, self.data, self.params, self.loglik, j, alpha)
                for j in range(len(self.params))
            ]
            return np.array(rows, dtype=float)
        raise FisherkitError(f"method must be 'wald' or 'profile', got {method!r}")

    def summary(self, alpha: float = 0.05) -> str:
        """A plain-text table: estimate, SE, Wald and profile intervals per parameter."""
        lines = [
            f"{self.family.name} maximum likelihood   n = {self.n}   log-likelihood = {self.loglik:.6g}",
            f"covariance: {self.cov_type}" + (f"   BOUNDARY: {', '.join(self.boundary)}" if self.boundary else ""),
            f"{'param':>10} {'estimate':>12} {'se':>12} {'wald ' + str(1 - alpha):>26} {'profile':>26}",
        ]
        prof = self.conf_int(alpha, "profile")
        wald = None if self.boundary else self.conf_int(alpha, "wald")
        for j, name in enumerate(self.param_names):
            w = "undefined (boundary)" if wald is None else f"[{wald[j, 0]:.6g}, {wald[j, 1]:.6g}]"
            p = f"[{prof[j, 0]:.6g}, {prof[j, 1]:.6g}]"
            lines.append(f"{name:>10} {self.params[j]:>12.6g} {self.se[j]:>12.6g} {w:>26} {p:>26}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        est = ", ".join(f"{n}={v:.6g}" for n, v in zip(self.param_names, self.params))
        return f"FitResult({self.family.name}: {est}; n={self.n}, cov_type={self.cov_type!r})"


def fit(family: Family, data, cov_type: str = "expected") -> FitResult:
    """Maximum-likelihood fit of ``family`` to i.i.d. ``data``.

    The MLE is closed-form where one exists, else numerical (BFGS + Newton in an unconstrained
    parametrisation). ``cov_type`` picks the covariance (see the module docstring); the default,
    ``"expected"``, is the inverse Fisher information [n I(θ̂)]⁻¹.

    >>> import fisherkit as fk
    >>> res = fk.stats.fit(fk.stats.Binomial(10), [6])
    >>> float(res.params[0]), round(float(res.se[0]), 4)      # √(0.6·0.4/10)
    (0.6, 0.1549)
    """
    if cov_type not in COV_TYPES:
        raise FisherkitError(f"cov_type must be one of {COV_TYPES}, got {cov_type!r}")
    x = family.check_data(data)
    theta = family.closed_form_mle(x)
    if theta is None:
        theta = numerical_mle(family, x, family.initial_params(x))
    theta = np.asarray(theta, dtype=float)
    if not np.isfinite(theta).all():
        raise FisherkitError(f"{family.name}: the MLE is not finite ({theta.tolist()})")
    loglik = float(family.log_prob_unchecked(x, theta).sum())
    if loglik == np.inf or np.isnan(loglik):
        raise FisherkitError(
            f"{family.name}: the likelihood is unbounded at θ = {theta.tolist()} (are all observations equal?)"
        )
    boundary = family.on_boundary(theta)
    if boundary:
        warnings.warn(
            f"{family.name}: the MLE {dict(zip(family.param_names, theta.round(12).tolist()))} is on the "
            f"boundary of the parameter space ({', '.join(boundary)}); the Fisher information diverges "
            "there, so standard errors are undefined (NaN) and Wald intervals are not available — "
            "use conf_int(method='profile') for a one-sided interval",
            BoundaryWarning,
            stacklevel=2,
        )
        expected = np.full((family.num_params, family.num_params), np.nan)
    else:
        expected = len(x) * family.fisher_information(theta)
    return FitResult(family, x, theta, loglik, cov_type, expected, boundary)
