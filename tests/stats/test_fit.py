"""fit(): closed-form examples, the four covariance types against hand formulas, profile intervals
against closed forms / independent root finding."""

import math

import numpy as np
import pytest
import torch
from scipy import optimize, stats

import fisherkit as fk
from fisherkit.stats import families as F


def test_binomial_examples_from_the_issue():
    res = fk.stats.fit(F.Binomial(10), [6])
    assert res.params[0] == pytest.approx(0.6)
    assert res.se[0] == pytest.approx(math.sqrt(0.6 * 0.4 / 10))
    assert round(res.se[0], 3) == 0.155
    assert round(fk.stats.fit(F.Binomial(100), [60]).se[0], 3) == 0.049
    assert res.n == 1 and res.cov_type == "expected"


def test_binomial_profile_interval_matches_independent_root_finding():
    res = fk.stats.fit(F.Binomial(10), [6])
    crit = stats.chi2.ppf(0.95, 1)
    ll = lambda p: stats.binom.logpmf(6, 10, p)
    g = lambda p: 2 * (ll(0.6) - ll(p)) - crit
    want = [optimize.brentq(g, 1e-9, 0.6), optimize.brentq(g, 0.6, 1 - 1e-9)]
    np.testing.assert_allclose(res.conf_int(0.05, "profile")[0], want, atol=1e-9)
    np.testing.assert_allclose(res.conf_int(0.05, "wald")[0], 0.6 + np.array([-1, 1]) * 1.959963985 * res.se[0])


def test_normal_mean_profile_interval_closed_form():
    # ℓ_p(μ) = −n/2 log(σ̂² + (μ − μ̂)²) + const  ⇒  μ̂ ± σ̂ √(exp(χ²/n) − 1)
    x = F.Normal().sample([3.0, 2.0], 25, rng=4)
    res = fk.stats.fit(F.Normal(), x)
    mu, sigma = res.params
    half = sigma * math.sqrt(math.exp(stats.chi2.ppf(0.9, 1) / 25) - 1)
    np.testing.assert_allclose(res.conf_int(0.1, "profile")[0], [mu - half, mu + half], rtol=1e-8)


def test_categorical_profile_equals_binomial_profile():
    x = np.array([0] * 7 + [1] * 12 + [2] * 21)
    prof = fk.stats.fit(F.Categorical(3), x).conf_int(method="profile")
    ref = fk.stats.fit(F.Binomial(40), [12]).conf_int(method="profile")[0]
    np.testing.assert_allclose(prof[1], ref, rtol=1e-8)


def test_covariance_types_against_hand_formulas():
    # Exponential(rate λ): s_i = 1/λ − x_i, J = n/λ² = n I(λ̂) at the MLE
    x = F.Exponential().sample([2.0], 80, rng=3)
    lam, n = 1 / x.mean(), len(x)
    opg = np.sum((1 / lam - x) ** 2)
    want = {"expected": lam**2 / n, "observed": lam**2 / n, "opg": 1 / opg, "sandwich": opg / (n / lam**2) ** 2}
    for cov_type, var in want.items():
        res = fk.stats.fit(F.Exponential(), x, cov_type=cov_type)
        assert res.cov[0, 0] == pytest.approx(var, rel=1e-10), cov_type
        assert res.se[0] == pytest.approx(math.sqrt(var), rel=1e-10)
    res = fk.stats.fit(F.Exponential(), x)
    assert res.observed_information[0, 0] == pytest.approx(n / lam**2, rel=1e-10)
    np.testing.assert_allclose(res.cramer_rao, res.cov)


def test_observed_equals_expected_at_the_mle_of_an_exponential_family():
    """Geometric is an exponential family: J(p) = n/p² + Σ(x−1)/(1−p)² differs from n I(p) in
    general, but at p̂ = 1/x̄ the two coincide (Σ(x−1) = n(1−p̂)/p̂). Families where they differ at
    the MLE are tested in test_nonexponential.py."""
    x = F.Geometric().sample([0.3], 60, rng=5)
    res = fk.stats.fit(F.Geometric(), x)
    p, n = res.params[0], len(x)
    assert res.observed_information[0, 0] == pytest.approx(n / p**2 + np.sum(x - 1) / (1 - p) ** 2, rel=1e-10)
    assert res.expected_information[0, 0] == pytest.approx(n / (p * p * (1 - p)), rel=1e-10)
    assert res.observed_information[0, 0] == pytest.approx(res.expected_information[0, 0], rel=1e-10)


def test_multi_parameter_fit_and_summary():
    x = F.Gamma().sample([2.0, 3.0], 200, rng=6)
    res = fk.stats.fit(F.Gamma(), x, cov_type="observed")
    # the gradient of the log-likelihood vanishes at the MLE
    t = torch.tensor(res.params, requires_grad=True)
    (g,) = torch.autograd.grad(F.Gamma().logpdf(torch.tensor(x), t).sum(), t)
    assert np.abs(g.numpy()).max() < 1e-7
    ci_w, ci_p = res.conf_int(method="wald"), res.conf_int(method="profile")
    assert np.all(ci_w[:, 0] < res.params) and np.all(res.params < ci_w[:, 1])
    assert np.all(ci_p[:, 0] < res.params) and np.all(res.params < ci_p[:, 1])
    text = res.summary()
    assert "shape" in text and "rate" in text and "observed" in text
    assert "Gamma" in repr(res)


def test_custom_family_fit_matches_closed_form_mle():
    rayleigh = fk.stats.Family.from_logpdf(
        lambda x, s: torch.log(x) - 2 * torch.log(s) - x**2 / (2 * s**2),
        ["s"], support="positive", bounds=[(0, math.inf)])
    x = np.random.default_rng(0).rayleigh(1.7, 150)
    res = fk.stats.fit(rayleigh, x)
    s_hat = math.sqrt(np.sum(x**2) / (2 * len(x)))
    assert res.params[0] == pytest.approx(s_hat, rel=1e-9)
    assert res.se[0] == pytest.approx(s_hat / math.sqrt(4 * len(x)), rel=1e-7)  # I(s) = 4/s²


def test_boundary_mle_warns_and_profile_is_one_sided():
    with pytest.warns(fk.stats.BoundaryWarning, match="diverges"):
        res = fk.stats.fit(F.Bernoulli(), [0] * 30)
    assert res.params[0] == 0 and np.isnan(res.se[0])  # never a Wald SE of 0
    with pytest.raises(fk.FisherkitError, match="Wald interval is undefined"):
        res.conf_int(method="wald")
    lo, hi = res.conf_int(0.05, "profile")[0]
    assert lo == 0.0
    assert hi == pytest.approx(1 - math.exp(-stats.chi2.ppf(0.95, 1) / 2 / 30), rel=1e-9)
    with pytest.warns(fk.stats.BoundaryWarning):
        res = fk.stats.fit(F.Binomial(5), [5, 5])
    assert res.conf_int(method="profile")[0, 1] == 1.0
    with pytest.warns(fk.stats.BoundaryWarning):
        res = fk.stats.fit(F.Poisson(), [0, 0, 0, 0])
    assert res.conf_int(method="profile")[0, 1] == pytest.approx(stats.chi2.ppf(0.95, 1) / 2 / 4, rel=1e-9)
    assert "boundary" in res.summary()


def test_numerical_profile_matches_closed_form_for_a_custom_normal():
    """The generic profile (nuisance σ maximised numerically) of a Normal declared from its
    log-density alone gives the closed-form interval μ̂ ± σ̂ √(exp(χ²/n) − 1)."""
    normal = fk.stats.Family.from_logpdf(
        lambda x, mu, s: -0.5 * ((x - mu) / s) ** 2 - torch.log(s) - 0.5 * math.log(2 * math.pi),
        ["mu", "sigma"], bounds=[(-math.inf, math.inf), (0, math.inf)])
    x = F.Normal().sample([-1.0, 0.5], 30, rng=9)
    res = fk.stats.fit(normal, x)
    np.testing.assert_allclose(res.params, F.Normal().closed_form_mle(x), rtol=1e-9)
    mu, sigma = res.params
    half = sigma * math.sqrt(math.exp(stats.chi2.ppf(0.95, 1) / 30) - 1)
    np.testing.assert_allclose(res.conf_int(0.05, "profile")[0], [mu - half, mu + half], rtol=1e-7)
