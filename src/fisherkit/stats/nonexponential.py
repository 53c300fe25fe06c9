"""Families outside the exponential family: there the observed information differs from the
expected one at the MLE (Efron & Hinkley 1978), so ``cov_type="observed"`` and ``"expected"`` give
different standard errors.

=====================  =====================  ==================================================
family                 parameters θ           I(θ) per observation
=====================  =====================  ==================================================
Logistic               μ, s (scale)           diag(1/(3s²), (π² + 3)/(9s²))
StudentT(ν), ν known   μ, σ (scale)           diag((ν+1)/((ν+3)σ²), 2ν/((ν+3)σ²))
Cauchy                 x₀, γ (scale)          diag(1/(2γ²), 1/(2γ²))   (= StudentT(1))
Weibull                k (shape), λ (scale)   [[((1−γₑ)² + π²/6)/k², −(1−γₑ)/λ], [−(1−γₑ)/λ, k²/λ²]]
=====================  =====================  ==================================================

γₑ ≈ 0.5772 is the Euler–Mascheroni constant. For a location-scale family p(x) = f((x−μ)/σ)/σ
the information is diagonal when f is symmetric, and scales as 1/σ².

Why observed ≠ expected here: for a full exponential family, −∇² log p(x | θ) at the MLE depends
on the data only through the sufficient statistic, which the likelihood equations pin to its
expectation, so J(θ̂) = n I(θ̂) exactly. For these families the Hessian of log p depends on each
x_i separately (e.g. Cauchy location: −∂² log p/∂x₀² = 2(1 − z²)/(γ²(1 + z²)²), z = (x − x₀)/γ),
and J(θ̂) − n I(θ̂) is a random O(√n) quantity.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import optimize, special

from ..errors import FisherkitError
from .family import Family, Support

INF = math.inf
EULER_GAMMA = float(np.euler_gamma)


def _robust_start(data: np.ndarray, iqr_to_scale: float) -> np.ndarray:
    """(median, scale from the interquartile range) — a start that heavy tails cannot spoil."""
    q1, med, q3 = np.quantile(data, [0.25, 0.5, 0.75])
    spread = (q3 - q1) * iqr_to_scale
    if not spread > 0:
        spread = float(np.std(data)) or 1.0
    return np.array([med, spread])


class Logistic(Family):
    """Logistic(μ, s): p(x) = e^{−z} / (s (1 + e^{−z})²), z = (x − μ)/s, x ∈ ℝ.

    No closed-form MLE (numerical, started at the median and √3·sd/π).
    I = diag(1/(3s²), (π² + 3)/(9s²)).
    """

    name = "Logistic"
    elementwise_params = True
    param_names = ("mu", "s")
    bounds = ((-INF, INF), (0.0, INF))
    support = Support.real()

    def logpdf(self, x, theta):
        mu, s = theta[0], theta[1]
        z = (x - mu) / s
        return -z - 2 * torch.nn.functional.softplus(-z) - torch.log(s)

    def closed_form_fisher(self, theta):
        s2 = theta[1] ** 2
        return np.diag([1.0 / (3 * s2), (math.pi**2 + 3) / (9 * s2)])

    def initial_params(self, data):
        sd = float(np.std(data))
        return np.array([float(np.median(data)), math.sqrt(3) * sd / math.pi if sd > 0 else 1.0])

    def _sample(self, theta, size, rng):
        return rng.logistic(theta[0], theta[1], size)


class StudentT(Family):
    """Student-t location-scale with known degrees of freedom ν:
    p(x) = Γ((ν+1)/2) / (Γ(ν/2) √(νπ) σ) · (1 + z²/ν)^{−(ν+1)/2}, z = (x − μ)/σ.

    No closed-form MLE (numerical, started at the median and the interquartile range).
    I = diag((ν+1)/((ν+3)σ²), 2ν/((ν+3)σ²)).
    """

    elementwise_params = True
    param_names = ("mu", "sigma")
    bounds = ((-INF, INF), (0.0, INF))
    support = Support.real()

    def __init__(self, df: float):
        try:
            df = float(df)
        except (TypeError, ValueError):
            raise FisherkitError(f"StudentT: the degrees of freedom df must be a positive number, got {df!r}") from None
        if not (math.isfinite(df) and df > 0):
            raise FisherkitError(f"StudentT: the degrees of freedom df must be a positive finite number, got {df}")
        self.df = df
        self.name = f"StudentT(df={df:g})"
        self._log_norm = special.gammaln((df + 1) / 2) - special.gammaln(df / 2) - 0.5 * math.log(df * math.pi)

    def __repr__(self):
        return f"StudentT({self.df:g})"

    def logpdf(self, x, theta):
        mu, sigma = theta[0], theta[1]
        z = (x - mu) / sigma
        return self._log_norm - torch.log(sigma) - (self.df + 1) / 2 * torch.log1p(z * z / self.df)

    def closed_form_fisher(self, theta):
        nu, s2 = self.df, theta[1] ** 2
        return np.diag([(nu + 1) / ((nu + 3) * s2), 2 * nu / ((nu + 3) * s2)])

    def initial_params(self, data):
        # the interquartile range of t_ν is 2·t_ν⁻¹(0.75)
        return _robust_start(data, 1.0 / (2 * special.stdtrit(self.df, 0.75)))

    def _sample(self, theta, size, rng):
        return theta[0] + theta[1] * rng.standard_t(self.df, size)


class Cauchy(Family):
    """Cauchy(x₀, γ): p(x) = 1 / (πγ (1 + z²)), z = (x − x₀)/γ — Student-t with ν = 1.

    No closed-form MLE (numerical, started at the median and half the interquartile range; the
    likelihood of the location can have several local maxima for small n, and for n = 2 the maximum
    is not unique, which raises). I = diag(1/(2γ²), 1/(2γ²)).

    >>> import fisherkit as fk
    >>> fk.stats.Cauchy().fisher_information([0.0, 2.0])   # 1/(2γ²) on the diagonal
    array([[0.125, 0.   ],
           [0.   , 0.125]])
    """

    name = "Cauchy"
    elementwise_params = True
    param_names = ("loc", "scale")
    bounds = ((-INF, INF), (0.0, INF))
    support = Support.real()

    def logpdf(self, x, theta):
        loc, scale = theta[0], theta[1]
        z = (x - loc) / scale
        return -math.log(math.pi) - torch.log(scale) - torch.log1p(z * z)

    def closed_form_fisher(self, theta):
        return np.diag([0.5, 0.5]) / theta[1] ** 2

    def closed_form_mle(self, data):
        """None (the MLE is numerical), except that two distinct observations have no unique MLE."""
        if len(data) == 2 and data[0] != data[1]:
            raise FisherkitError(
                "Cauchy: with two distinct observations the MLE is not unique — the likelihood is "
                "maximal on a whole semicircle of (loc, scale) through them (Copas 1975); use n >= 3"
            )
        return None

    def initial_params(self, data):
        return _robust_start(data, 0.5)

    def _sample(self, theta, size, rng):
        return theta[0] + theta[1] * rng.standard_cauchy(size)


class Weibull(Family):
    """Weibull(k, λ), shape k and scale λ: p(x) = (k/λ)(x/λ)^{k−1} exp(−(x/λ)ᵏ), x > 0.

    MLE: k̂ is the root of Σ xᵢᵏ log xᵢ / Σ xᵢᵏ − 1/k − mean(log x) = 0 (increasing in k; solved
    to machine precision), λ̂ = (mean xᵏ)^{1/k̂}.
    I = [[((1−γₑ)² + π²/6)/k², −(1−γₑ)/λ], [−(1−γₑ)/λ, k²/λ²]].
    """

    name = "Weibull"
    elementwise_params = True
    param_names = ("shape", "scale")
    bounds = ((0.0, INF), (0.0, INF))
    support = Support.real(0.0, INF)

    def logpdf(self, x, theta):
        k, lam = theta[0], theta[1]
        logz = torch.log(x) - torch.log(lam)
        return torch.log(k) - torch.log(lam) + (k - 1) * logz - torch.exp(k * logz)

    def closed_form_fisher(self, theta):
        k, lam = theta
        c = 1 - EULER_GAMMA
        return np.array([[(c * c + math.pi**2 / 6) / k**2, -c / lam], [-c / lam, k**2 / lam**2]])

    def closed_form_mle(self, data):
        y = np.log(data)
        if np.ptp(y) <= 1e-13 * (1 + np.abs(y).max()):
            raise FisherkitError("Weibull: all observations are equal, so the MLE does not exist (shape → ∞)")
        y = y - y.max()  # λ is a scale: fit log(x/max x), then scale back

        def f(k):  # Σ softmax(k y)·y − 1/k − mean(y), increasing from −∞ to −mean(y) > 0
            return float(np.dot(special.softmax(k * y), y)) - 1.0 / k - y.mean()

        lo, hi = 1.0, 1.0
        while f(lo) > 0:
            lo /= 2.0
        while f(hi) < 0:
            hi *= 2.0
        k = optimize.brentq(f, lo, hi, xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=500)
        log_lam = (special.logsumexp(k * y) - math.log(len(y))) / k + math.log(data.max())
        return np.array([k, math.exp(log_lam)])

    def _sample(self, theta, size, rng):
        return theta[1] * rng.weibull(theta[0], size)


__all__ = ["Logistic", "StudentT", "Cauchy", "Weibull"]
