"""Families where observed and expected information differ at the MLE (Logistic, StudentT,
Cauchy, Weibull), and heavy-tailed custom families.

References: scipy.stats log-densities and samplers; textbook Fisher informations written out here;
the variance of the score over seeded draws (CLT bound: 5 standard errors of the mean of s sᵀ);
the observed information as a central finite-difference Hessian of scipy's log-likelihood."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

import fisherkit as fk
from fisherkit.stats import Cauchy, Logistic, StudentT, Weibull

G = float(np.euler_gamma)


def textbook_fisher(name, theta, df=None):
    """Per-observation Fisher information from the literature (independent of the package)."""
    a, b = theta
    if name == "logistic":
        return np.diag([1 / 3, (math.pi**2 + 3) / 9]) / b**2
    if name == "t":
        return np.diag([(df + 1) / (df + 3), 2 * df / (df + 3)]) / b**2
    if name == "cauchy":
        return np.eye(2) / (2 * b**2)
    if name == "weibull":
        return np.array([[((1 - G) ** 2 + math.pi**2 / 6) / a**2, -(1 - G) / b], [-(1 - G) / b, a**2 / b**2]])
    raise KeyError(name)


# (family, θ, name for textbook_fisher, df, scipy frozen distribution, scipy logpdf(x, θ))
CASES = [
    (Logistic(), [1.0, 2.0], "logistic", None, stats.logistic(1.0, 2.0),
     lambda x, t: stats.logistic.logpdf(x, t[0], t[1])),
    (StudentT(3), [-1.0, 0.5], "t", 3.0, stats.t(3, -1.0, 0.5), lambda x, t: stats.t.logpdf(x, 3, t[0], t[1])),
    (Cauchy(), [2.0, 3.0], "cauchy", None, stats.cauchy(2.0, 3.0), lambda x, t: stats.cauchy.logpdf(x, t[0], t[1])),
    (Weibull(), [1.7, 2.5], "weibull", None, stats.weibull_min(1.7, scale=2.5),
     lambda x, t: stats.weibull_min.logpdf(x, t[0], scale=t[1])),
]
IDS = ["logistic", "t3", "cauchy", "weibull"]


@pytest.mark.parametrize("family, theta, name, df, ref, ref_logpdf", CASES, ids=IDS)
def test_log_prob_and_sampler_match_scipy(family, theta, name, df, ref, ref_logpdf):
    x = ref.rvs(size=50, random_state=0)
    np.testing.assert_allclose(family.log_prob(x, theta), ref.logpdf(x), rtol=1e-12, atol=1e-12)
    draws = family.sample(theta, 20_000, rng=1)
    np.testing.assert_array_equal(draws, family.sample(theta, 20_000, rng=np.random.default_rng(1)))
    # Kolmogorov–Smirnov against scipy's cdf: a correct sampler fails at level 1e-4 once in 10,000 seeds
    assert stats.kstest(draws, ref.cdf).pvalue > 1e-4
    # KS is weak in the tails (t₄ for t₃ passes it): each 1 % tail holds 1 % of the draws, within
    # 5 binomial standard errors (√(0.01·0.99/N) ≈ 0.07 %)
    se = math.sqrt(0.01 * 0.99 / len(draws))
    assert abs(np.mean(draws < ref.ppf(0.01)) - 0.01) < 5 * se
    assert abs(np.mean(draws > ref.ppf(0.99)) - 0.01) < 5 * se


@pytest.mark.parametrize("family, theta, name, df, ref, ref_logpdf", CASES, ids=IDS)
def test_closed_form_equals_textbook_and_generic_quadrature(family, theta, name, df, ref, ref_logpdf):
    closed = family.fisher_information(theta)
    np.testing.assert_allclose(closed, textbook_fisher(name, theta, df), rtol=1e-13, atol=1e-15)
    by_score, by_hessian = fk.stats.fisher_information(family, theta, form="both")
    scale = np.abs(closed).max()
    assert np.abs(by_score - closed).max() <= 1e-9 * scale
    assert np.abs(by_hessian - closed).max() <= 1e-9 * scale


def test_special_cases_of_the_closed_forms():
    # t with ν = 1 is Cauchy; ν → ∞ tends to Normal's diag(1/σ², 2/σ²); Weibull k = 1 is the
    # exponential with scale λ = 1/rate, whose information is 1/λ²
    np.testing.assert_allclose(StudentT(1).fisher_information([0.3, 1.7]), Cauchy().fisher_information([0.3, 1.7]))
    np.testing.assert_allclose(StudentT(1e9).fisher_information([0.0, 2.0]), np.diag([0.25, 0.5]), rtol=1e-8)
    assert Weibull().fisher_information([1.0, 4.0])[1, 1] == pytest.approx(1 / 16)


@pytest.mark.parametrize("family, theta, name, df, ref, ref_logpdf", CASES, ids=IDS)
def test_fisher_is_the_variance_of_the_score_by_simulation(family, theta, name, df, ref, ref_logpdf):
    """100,000 draws from scipy's sampler, scores by autodiff: E[s] = 0 and E[s sᵀ] = I(θ), each
    entry within 5 Monte Carlo standard errors (sd of the summand / √N; scores of these families
    have finite fourth moments, so the CLT applies)."""
    n = 100_000
    x = ref.rvs(size=n, random_state=12)
    _, s, h = fk.stats.score_and_hessian(family, x, theta)
    s, h = s.numpy(), h.numpy()
    closed = textbook_fisher(name, theta, df)
    assert np.all(np.abs(s.mean(0)) <= 5 * s.std(0) / math.sqrt(n))
    outer = s[:, :, None] * s[:, None, :]
    assert np.all(np.abs(outer.mean(0) - closed) <= 5 * outer.std(0) / math.sqrt(n))
    assert np.all(np.abs(-h.mean(0) - closed) <= 5 * h.std(0) / math.sqrt(n))


def _fd_hessian(f, theta, rel=1e-4):
    """Central finite-difference Hessian of a scalar function (independent of torch autodiff)."""
    theta = np.asarray(theta, dtype=float)
    p = len(theta)
    steps = rel * np.maximum(np.abs(theta), 1.0)
    out = np.empty((p, p))
    for i in range(p):
        for j in range(p):
            ei, ej = np.eye(p)[i] * steps[i], np.eye(p)[j] * steps[j]
            out[i, j] = (f(theta + ei + ej) - f(theta + ei - ej) - f(theta - ei + ej) + f(theta - ei - ej)) / (
                4 * steps[i] * steps[j])
    return out


@pytest.mark.parametrize("family, theta, name, df, ref, ref_logpdf", CASES, ids=IDS)
def test_expected_and_observed_covariances_are_told_apart(family, theta, name, df, ref, ref_logpdf):
    """At the MLE of these families J(θ̂) ≠ n I(θ̂) (here, n = 40: by 0.7 % for Logistic, more for the
    others — at least 10× the loosest tolerance below, 1e-4). Each
    cov_type must use its own matrix: cov_type="expected" is [n I(θ̂)]⁻¹ with I from the textbook
    formula, cov_type="observed" is J⁻¹ with J the finite-difference Hessian of scipy's
    log-likelihood. Swapping the two (either way) fails by far more than the tolerances."""
    x = ref.rvs(size=40, random_state=4)
    n = len(x)
    res_e = fk.stats.fit(family, x, cov_type="expected")
    res_o = fk.stats.fit(family, x, cov_type="observed")
    theta_hat = res_e.params
    np.testing.assert_array_equal(res_o.params, theta_hat)
    expected = n * textbook_fisher(name, theta_hat, df)
    observed = -_fd_hessian(lambda t: ref_logpdf(x, t).sum(), theta_hat)
    gap = np.abs(observed - expected).max() / np.abs(expected).max()
    assert gap > 1e-3, gap  # the data tell the two apart
    np.testing.assert_allclose(res_e.expected_information, expected, rtol=1e-10, atol=1e-12 * np.abs(expected).max())
    np.testing.assert_allclose(res_e.observed_information, observed, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
    np.testing.assert_allclose(res_e.cov, np.linalg.inv(expected), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(res_o.cov, np.linalg.inv(observed), rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(res_e.cramer_rao, res_e.cov)  # the bound is the expected one
    np.testing.assert_allclose(res_o.cramer_rao, res_e.cov)  # whatever cov_type says
    # the MLE: the gradient of scipy's log-likelihood vanishes there
    eps = 1e-6 * np.maximum(np.abs(theta_hat), 1)
    grad = [(ref_logpdf(x, theta_hat + e).sum() - ref_logpdf(x, theta_hat - e).sum()) / (2 * e[i])
            for i, e in enumerate(np.diag(eps))]
    assert np.abs(grad).max() < 1e-5 * n


def test_weibull_closed_form_mle_matches_scipy_fit():
    x = stats.weibull_min(0.8, scale=30.0).rvs(size=300, random_state=5)
    res = fk.stats.fit(Weibull(), x)
    k, _, lam = stats.weibull_min.fit(x, floc=0)
    np.testing.assert_allclose(res.params, [k, lam], rtol=1e-4)
    assert res.loglik >= stats.weibull_min.logpdf(x, k, scale=lam).sum() - 1e-9
    # the defining equation of k̂, and λ̂ given k̂
    kh, lh = res.params
    w = x**kh
    assert np.sum(w * np.log(x)) / np.sum(w) - 1 / kh - np.mean(np.log(x)) == pytest.approx(0, abs=1e-12)
    assert lh == pytest.approx(np.mean(w) ** (1 / kh), rel=1e-12)


def test_bad_degrees_of_freedom_and_degenerate_weibull():
    for bad in (0, -2.0, math.inf, "three"):
        with pytest.raises(fk.FisherkitError, match="degrees of freedom"):
            StudentT(bad)
    with pytest.raises(fk.FisherkitError, match="all observations are equal"):
        fk.stats.fit(Weibull(), [2.0, 2.0, 2.0])
    with pytest.raises(fk.errors.SupportError, match="index 1"):
        fk.stats.fit(Weibull(), [1.0, -1.0])
    # two Cauchy observations: L(1.5, 0.5) = L(1.2, 0.4) = (1/π)² — a semicircle of maxima
    assert stats.cauchy.logpdf([1, 2], 1.5, 0.5).sum() == pytest.approx(stats.cauchy.logpdf([1, 2], 1.2, 0.4).sum())
    with pytest.raises(fk.FisherkitError, match="not unique"):
        fk.stats.fit(Cauchy(), [1.0, 2.0])
    with pytest.raises(fk.FisherkitError, match="unbounded"):  # all equal: scale → 0
        fk.stats.fit(Cauchy(), [2.0, 2.0, 2.0])


# ------------------------------------------------------------------ heavy-tailed custom families


def _custom_cauchy():
    return fk.stats.Family.from_logpdf(
        lambda x, loc, scale: -math.log(math.pi) - torch.log(scale) - torch.log1p(((x - loc) / scale) ** 2),
        ["loc", "scale"], bounds=[(-math.inf, math.inf), (0, math.inf)], name="custom Cauchy")


def test_custom_cauchy_information_by_quadrature_over_the_whole_line():
    """A 1/x² tail: stopping the integral at |x| = 2,000 leaves 3.2e-4 of the mass (the mass check
    used to raise). I = diag(1/(2γ²)), to 1e-10, from a narrow and a wide scale."""
    cauchy = _custom_cauchy()
    for theta in ([0.0, 1.0], [40.0, 0.02], [-5.0, 900.0]):
        by_score, by_hessian = fk.stats.fisher_information(cauchy, theta, form="both")
        want = np.eye(2) / (2 * theta[1] ** 2)
        np.testing.assert_allclose(by_score, want, rtol=1e-10, atol=1e-12 * want.max())
        np.testing.assert_allclose(by_hessian, want, rtol=1e-10, atol=1e-12 * want.max())


def test_custom_heavier_tails_and_a_heavy_tail_on_the_positive_half_line():
    # Student-t with ν = 0.5 (tail ∝ |x|^-1.5), declared from its log-density alone
    nu = 0.5
    c = math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2) - 0.5 * math.log(nu * math.pi)
    t_half = fk.stats.Family.from_logpdf(
        lambda x, m, s: c - torch.log(s) - (nu + 1) / 2 * torch.log1p(((x - m) / s) ** 2 / nu),
        ["m", "s"], bounds=[(-math.inf, math.inf), (0, math.inf)])
    np.testing.assert_allclose(fk.stats.fisher_information(t_half, [1.0, 2.0]),
                               textbook_fisher("t", [1.0, 2.0], nu), rtol=1e-10, atol=1e-14)
    # half-Cauchy on x > 0 (tail ∝ x^-2): |X| is sufficient for γ when X ~ Cauchy(0, γ), so
    # I(γ) = 1/(2γ²), Cauchy's scale information
    half_cauchy = fk.stats.Family.from_logpdf(
        lambda x, g: math.log(2 / math.pi) - torch.log(g) - torch.log1p((x / g) ** 2),
        ["g"], support="positive", bounds=[(0, math.inf)])
    for g in (0.01, 3.0, 1e4):
        assert fk.stats.fisher_information(half_cauchy, [g])[0, 0] == pytest.approx(1 / (2 * g * g), rel=1e-10)
    # log-Cauchy (log x ~ Cauchy): 1e-3 of its mass lies beyond x = 1e308, out of float64's reach —
    # a named error that says so, not a wrong number
    log_cauchy = fk.stats.Family.from_logpdf(
        lambda x, m, s: -math.log(math.pi) - torch.log(s) - torch.log(x) - torch.log1p(((torch.log(x) - m) / s) ** 2),
        ["m", "s"], support="positive", bounds=[(-math.inf, math.inf), (0, math.inf)], name="log-Cauchy")
    with pytest.raises(fk.FisherkitError, match=r"log-Cauchy: the density's tails are too heavy.*method='mc'"):
        fk.stats.fisher_information(log_cauchy, [0.5, 1.5])


def test_custom_cauchy_fits_like_the_builtin_and_scipy():
    x = stats.cauchy(5.0, 2.0).rvs(size=200, random_state=0)
    res = fk.stats.fit(_custom_cauchy(), x)
    builtin = fk.stats.fit(Cauchy(), x)
    np.testing.assert_allclose(res.params, builtin.params, rtol=1e-9)
    np.testing.assert_allclose(res.se, np.full(2, math.sqrt(2 / len(x)) * res.params[1]), rtol=1e-9)
    loc, scale = stats.cauchy.fit(x)
    np.testing.assert_allclose(res.params, [loc, scale], rtol=1e-4)
    assert res.loglik >= stats.cauchy.logpdf(x, loc, scale).sum() - 1e-9
