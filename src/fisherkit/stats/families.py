"""The classical families, each with its closed-form Fisher information (per observation).

=====================  ===================  ==========================================
family                 parameters θ          I(θ)
=====================  ===================  ==========================================
Bernoulli              p                     1 / (p(1−p))
Binomial(n)            p                     n / (p(1−p))
Categorical(k)         p_0 … p_{k−2}         diag(1/p_i) + 11ᵀ / p_{k−1}
Multinomial(n, k)      p_0 … p_{k−2}         n [diag(1/p_i) + 11ᵀ / p_{k−1}]
Poisson                λ                     1 / λ
Geometric              p (trials ≥ 1)        1 / (p²(1−p))
Normal                 μ, σ                  diag(1/σ², 2/σ²)
Exponential            λ (rate)              1 / λ²
Gamma                  α (shape), β (rate)   [[ψ′(α), −1/β], [−1/β, α/β²]]
Beta                   a, b                  [[ψ′(a)−ψ′(a+b), −ψ′(a+b)], [−ψ′(a+b), ψ′(b)−ψ′(a+b)]]
=====================  ===================  ==========================================

In Categorical/Multinomial the last probability p_{k−1} = 1 − Σ_{i<k−1} p_i is not a free parameter.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from scipy import optimize, special

from ..errors import FisherkitError
from .family import Family, Support

INF = math.inf


def _xlogy(x, y):
    """x·log y with 0·log 0 = 0; y is replaced by 1 where x = 0 so no NaN reaches the gradient
    (and torch.special.xlogy is slow under torch.func transforms)."""
    return x * torch.log(torch.where(x == 0, torch.ones_like(y), y))


class Bernoulli(Family):
    """Bernoulli(p): P(x) = pˣ(1−p)^{1−x}, x ∈ {0, 1}; MLE p̂ = x̄; I(p) = 1/(p(1−p))."""

    name = "Bernoulli"
    elementwise_params = True
    param_names = ("p",)
    bounds = ((0.0, 1.0),)
    support = Support.integers(0, 1)

    def logpdf(self, x, theta):
        p = theta[0]
        return _xlogy(x, p) + _xlogy(1 - x, 1 - p)

    def closed_form_fisher(self, theta):
        p = theta[0]
        return np.array([[1.0 / (p * (1 - p))]])

    def closed_form_mle(self, data):
        return np.array([data.mean()])

    def support_hint(self):
        return "values in {0, 1}"

    def _sample(self, theta, size, rng):
        return rng.binomial(1, theta[0], size)


class Binomial(Family):
    """Binomial(n, p): successes out of n trials; MLE p̂ = x̄/n; I(p) = n/(p(1−p))."""

    elementwise_params = True
    param_names = ("p",)
    bounds = ((0.0, 1.0),)

    def __init__(self, n: int):
        if int(n) != n or n < 1:
            raise FisherkitError(f"Binomial: the number of trials n must be a positive integer, got {n}")
        self.n = int(n)
        self.name = f"Binomial(n={self.n})"
        self.support = Support.integers(0, self.n)

    def __repr__(self):
        return f"Binomial({self.n})"

    def logpdf(self, x, theta):
        p, n = theta[0], self.n
        logc = torch.lgamma(torch.tensor(n + 1.0, dtype=x.dtype)) - torch.lgamma(x + 1) - torch.lgamma(n - x + 1)
        return logc + _xlogy(x, p) + _xlogy(n - x, 1 - p)

    def closed_form_fisher(self, theta):
        p = theta[0]
        return np.array([[self.n / (p * (1 - p))]])

    def closed_form_mle(self, data):
        return np.array([data.mean() / self.n])

    def support_hint(self):
        return f"integers 0..{self.n}: successes cannot be negative or exceed n={self.n} trials"

    def _sample(self, theta, size, rng):
        return rng.binomial(self.n, theta[0], size)


class Categorical(Family):
    """Categorical(k): labels x ∈ {0, …, k−1} with P(x = i) = p_i; free parameters p_0 … p_{k−2}.

    MLE p̂_i = (count of i)/N. I = diag(1/p_i) + 11ᵀ/p_{k−1} (the last category is the reference).
    """

    def __init__(self, k: int):
        if int(k) != k or k < 2:
            raise FisherkitError(f"Categorical: needs k >= 2 categories, got {k}")
        self.k = int(k)
        self.name = f"Categorical(k={self.k})"
        self.param_names = tuple(f"p{i}" for i in range(self.k - 1))
        self.bounds = tuple((0.0, 1.0) for _ in range(self.k - 1))
        self.support = Support.integers(0, self.k - 1)

    def __repr__(self):
        return f"Categorical({self.k})"

    elementwise_params = True

    def _full(self, theta):
        """All k probabilities: shape (k,) for θ of shape (k−1,), or (N, k) for per-observation
        copies of θ of shape (k−1, N)."""
        full = torch.cat([theta, 1 - theta.sum(0, keepdim=True)])
        return full if full.ndim == 1 else full.T

    def logpdf(self, x, theta):
        onehot = (x.reshape(-1, 1) == torch.arange(self.k, dtype=x.dtype)).to(x.dtype)
        return _xlogy(onehot, self._full(theta).expand_as(onehot)).sum(-1)

    def check_params(self, params):
        theta = super().check_params(params)
        if theta.sum() > 1 + 1e-12:
            raise FisherkitError(f"{self.name}: probabilities {theta.tolist()} sum to more than 1")
        return theta

    def on_boundary(self, theta):
        names = super().on_boundary(theta)
        if 1 - theta.sum() <= 0:
            names.append(f"p{self.k - 1} (= 1 - sum)")
        return names

    def closed_form_fisher(self, theta):
        last = 1 - theta.sum()
        return np.diag(1.0 / theta) + 1.0 / last

    def _counts(self, data):
        return np.bincount(data.astype(int).ravel(), minlength=self.k).astype(float)

    def closed_form_mle(self, data):
        c = self._counts(data)
        return c[:-1] / c.sum()

    def profile_nuisance(self, data, j, value):
        """With p_j fixed, the other probabilities maximising ℓ are (1−p_j)·c_i / Σ_{l≠j} c_l."""
        rest = self._counts(data)
        rest[j] = 0.0
        full = (1 - value) * (rest / rest.sum() if rest.sum() > 0 else np.full(self.k, 1 / (self.k - 1)))
        full[j] = value
        return full[:-1]

    def to_unconstrained(self, theta):
        """Additive log-ratio: u_i = log(p_i / p_{k−1})."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(theta) - np.log(1 - theta.sum())

    def from_unconstrained(self, u):
        return torch.softmax(torch.cat([u, u.new_zeros(1)]), 0)[:-1]

    def _sample(self, theta, size, rng):
        return rng.choice(self.k, size=size, p=np.append(theta, max(0.0, 1 - theta.sum())))


class Multinomial(Categorical):
    """Multinomial(n, k): count vectors of length k summing to n; same parameters as Categorical(k).

    I(p) = n [diag(1/p_i) + 11ᵀ/p_{k−1}] per observed vector.
    """

    def __init__(self, n: int, k: int):
        super().__init__(k)
        if int(n) != n or n < 1:
            raise FisherkitError(f"Multinomial: the number of trials n must be a positive integer, got {n}")
        self.n = int(n)
        self.name = f"Multinomial(n={self.n}, k={self.k})"
        self.event_shape = (self.k,)
        self.support = Support.integers(0, self.n)

    def __repr__(self):
        return f"Multinomial({self.n}, {self.k})"

    def in_support(self, x):
        return (self.support.contains(x).all(axis=-1)) & (x.sum(axis=-1) == self.n)

    def support_hint(self):
        return f"non-negative integer counts of length {self.k} summing to n={self.n}"

    def support_points(self, theta):
        """All count vectors (C(n+k−1, k−1) of them) for exact enumeration."""
        pts = [
            np.diff(np.concatenate([[-1], np.array(bars), [self.n + self.k - 1]])) - 1
            for bars in itertools.combinations(range(self.n + self.k - 1), self.k - 1)
        ]
        return np.array(pts, dtype=float)

    def logpdf(self, x, theta):
        logc = torch.lgamma(torch.tensor(self.n + 1.0, dtype=x.dtype)) - torch.lgamma(x + 1).sum(-1)
        return logc + _xlogy(x, self._full(theta).expand_as(x)).sum(-1)

    def closed_form_fisher(self, theta):
        return self.n * super().closed_form_fisher(theta)

    def _counts(self, data):
        return data.sum(axis=0).astype(float)

    def _sample(self, theta, size, rng):
        return rng.multinomial(self.n, np.append(theta, max(0.0, 1 - theta.sum())), size=size)


class Poisson(Family):
    """Poisson(λ): P(x) = λˣe^{−λ}/x!, x ∈ {0, 1, …}; MLE λ̂ = x̄; I(λ) = 1/λ."""

    name = "Poisson"
    elementwise_params = True
    param_names = ("lam",)
    bounds = ((0.0, INF),)
    support = Support.integers(0, INF)

    def logpdf(self, x, theta):
        lam = theta[0]
        return _xlogy(x, lam) - lam - torch.lgamma(x + 1)

    def closed_form_fisher(self, theta):
        return np.array([[1.0 / theta[0]]])

    def closed_form_mle(self, data):
        return np.array([data.mean()])

    def support_hint(self):
        return "non-negative integer counts"

    def _sample(self, theta, size, rng):
        return rng.poisson(theta[0], size)


class Geometric(Family):
    """Geometric(p): number of trials up to and including the first success, x ∈ {1, 2, …}.

    P(x) = (1−p)^{x−1} p (numpy/scipy convention); MLE p̂ = 1/x̄; I(p) = 1/(p²(1−p)).
    """

    name = "Geometric"
    elementwise_params = True
    param_names = ("p",)
    bounds = ((0.0, 1.0),)
    support = Support.integers(1, INF)

    def logpdf(self, x, theta):
        p = theta[0]
        return _xlogy(x - 1, 1 - p) + torch.log(p)

    def closed_form_fisher(self, theta):
        p = theta[0]
        return np.array([[1.0 / (p * p * (1 - p))]])

    def closed_form_mle(self, data):
        return np.array([1.0 / data.mean()])

    def support_hint(self):
        return "integers 1, 2, ... (number of trials up to the first success)"

    def _sample(self, theta, size, rng):
        return rng.geometric(theta[0], size)


class Normal(Family):
    """Normal(μ, σ); MLE μ̂ = x̄, σ̂² = Σ(x−x̄)²/N (the biased MLE); I = diag(1/σ², 2/σ²)."""

    name = "Normal"
    elementwise_params = True
    param_names = ("mu", "sigma")
    bounds = ((-INF, INF), (0.0, INF))
    support = Support.real()

    def logpdf(self, x, theta):
        mu, sigma = theta[0], theta[1]
        z = (x - mu) / sigma
        return -0.5 * z * z - torch.log(sigma) - 0.5 * math.log(2 * math.pi)

    def closed_form_fisher(self, theta):
        s2 = theta[1] ** 2
        return np.diag([1.0 / s2, 2.0 / s2])

    def closed_form_mle(self, data):
        return np.array([data.mean(), np.sqrt(np.mean((data - data.mean()) ** 2))])

    def profile_nuisance(self, data, j, value):
        """μ fixed: σ̂(μ) = √mean((x−μ)²); σ fixed: μ̂ = x̄."""
        if j == 0:
            return np.array([value, np.sqrt(np.mean((data - value) ** 2))])
        return np.array([data.mean(), value])

    def _sample(self, theta, size, rng):
        return rng.normal(theta[0], theta[1], size)


class Exponential(Family):
    """Exponential(λ) with rate λ: p(x) = λe^{−λx}, x > 0; MLE λ̂ = 1/x̄; I(λ) = 1/λ²."""

    name = "Exponential"
    elementwise_params = True
    param_names = ("rate",)
    bounds = ((0.0, INF),)
    support = Support.real(0.0, INF)

    def logpdf(self, x, theta):
        lam = theta[0]
        return torch.log(lam) - lam * x

    def closed_form_fisher(self, theta):
        return np.array([[1.0 / theta[0] ** 2]])

    def closed_form_mle(self, data):
        return np.array([1.0 / data.mean()])

    def _sample(self, theta, size, rng):
        return rng.exponential(1.0 / theta[0], size)


class Gamma(Family):
    """Gamma(α, β), shape α and rate β: p(x) = βᵅ x^{α−1} e^{−βx} / Γ(α), x > 0.

    MLE: β̂ = α̂/x̄ with α̂ the root of log α − ψ(α) = log x̄ − mean(log x) (one-dimensional, solved
    to machine precision). I = [[ψ′(α), −1/β], [−1/β, α/β²]].
    """

    name = "Gamma"
    elementwise_params = True
    param_names = ("shape", "rate")
    bounds = ((0.0, INF), (0.0, INF))
    support = Support.real(0.0, INF)

    def logpdf(self, x, theta):
        a, b = theta[0], theta[1]
        return a * torch.log(b) + (a - 1) * torch.log(x) - b * x - torch.lgamma(a)

    def closed_form_fisher(self, theta):
        a, b = theta
        return np.array([[special.polygamma(1, a), -1.0 / b], [-1.0 / b, a / b**2]])

    def closed_form_mle(self, data):
        s = math.log(data.mean()) - np.mean(np.log(data))
        if s <= 1e-13:
            raise FisherkitError("Gamma: all observations are equal, so the MLE does not exist (shape → ∞)")
        f = lambda a: math.log(a) - special.digamma(a) - s  # decreasing from +inf to 0
        lo, hi = 1e-8, 1.0
        while f(hi) > 0:
            hi *= 2.0
        a = optimize.brentq(f, lo, hi, xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=500)
        return np.array([a, a / data.mean()])

    def _sample(self, theta, size, rng):
        return rng.gamma(theta[0], 1.0 / theta[1], size)


class Beta(Family):
    """Beta(a, b): p(x) = x^{a−1}(1−x)^{b−1}/B(a, b), 0 < x < 1.

    No closed-form MLE (numerical, started at the method-of-moments estimate).
    I = [[ψ′(a)−ψ′(a+b), −ψ′(a+b)], [−ψ′(a+b), ψ′(b)−ψ′(a+b)]].
    """

    name = "Beta"
    elementwise_params = True
    param_names = ("a", "b")
    bounds = ((0.0, INF), (0.0, INF))
    support = Support.real(0.0, 1.0)

    def logpdf(self, x, theta):
        a, b = theta[0], theta[1]
        logb = torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)
        return (a - 1) * torch.log(x) + (b - 1) * torch.log1p(-x) - logb

    def closed_form_fisher(self, theta):
        a, b = theta
        t = special.polygamma(1, a + b)
        return np.array([[special.polygamma(1, a) - t, -t], [-t, special.polygamma(1, b) - t]])

    def initial_params(self, data):
        m, v = data.mean(), data.var()
        if v <= 0:
            raise FisherkitError("Beta: all observations are equal, so the MLE does not exist (a, b → ∞)")
        c = m * (1 - m) / v - 1
        return np.array([m * c, (1 - m) * c]) if c > 0 else np.array([1.0, 1.0])

    def _sample(self, theta, size, rng):
        return rng.beta(theta[0], theta[1], size)


__all__ = [
    "Bernoulli",
    "Binomial",
    "Categorical",
    "Multinomial",
    "Poisson",
    "Geometric",
    "Normal",
    "Exponential",
    "Gamma",
    "Beta",
]
