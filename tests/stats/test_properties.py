"""Property-based tests (hypothesis): for any sample, fit() agrees with the closed forms, and the
GLMs either solve their score equations or raise a FisherkitError — never another exception.

References: the textbook MLE / standard error formulas; scipy.stats log-pmfs for the profile
likelihood; the score equations Xᵀ(y − μ̂) = 0 of a canonical-link GLM. Examples are derandomised
(the same ones every run) so a failure reproduces."""

import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy import stats

import fisherkit as fk
from fisherkit.errors import FisherkitError
from fisherkit.stats import families as F

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@st.composite
def binomial_samples(draw):
    trials = draw(st.integers(1, 50))
    data = draw(st.lists(st.integers(0, trials), min_size=1, max_size=30))
    return trials, data


@SETTINGS
@given(binomial_samples())
def test_binomial_mle_se_and_profile_match_closed_forms(sample):
    trials, data = sample
    total, n = sum(data), len(data)
    assume(0 < total < n * trials)  # p̂ strictly inside (0, 1); the boundary is tested elsewhere
    res = fk.stats.fit(F.Binomial(trials), data)
    p = total / (n * trials)
    assert res.params[0] == pytest.approx(p, rel=1e-12)
    assert res.se[0] == pytest.approx(math.sqrt(p * (1 - p) / (n * trials)), rel=1e-10)
    # an exponential family: observed = expected information at the MLE
    assert res.observed_information[0, 0] == pytest.approx(res.expected_information[0, 0], rel=1e-8)
    # profile interval: 2[ℓ(p̂) − ℓ(p)] = χ²₁(0.95) at both ends (scipy's log-pmf)
    ll = lambda q: stats.binom.logpmf(data, trials, q).sum()
    crit = stats.chi2.ppf(0.95, 1)
    for end in res.conf_int(0.05, "profile")[0]:
        assert 0 < end < 1
        assert 2 * (ll(p) - ll(end)) == pytest.approx(crit, abs=1e-6)


@SETTINGS
@given(st.lists(st.integers(0, 1000), min_size=1, max_size=40))
def test_poisson_mle_se_and_information_match_closed_forms(data):
    assume(sum(data) > 0)
    res = fk.stats.fit(F.Poisson(), data)
    n, lam = len(data), float(np.mean(data))
    assert res.params[0] == pytest.approx(lam, rel=1e-12)
    assert res.se[0] == pytest.approx(math.sqrt(lam / n), rel=1e-10)
    assert res.expected_information[0, 0] == pytest.approx(n / lam, rel=1e-12)
    # J = Σx/λ̂² = n/λ̂ at the MLE
    assert res.observed_information[0, 0] == pytest.approx(sum(data) / lam**2, rel=1e-8)


@SETTINGS
@given(st.lists(st.floats(1e-3, 1e3), min_size=2, max_size=40))
def test_weibull_closed_form_mle_solves_the_likelihood_equations(data):
    x = np.array(data)
    assume(np.ptp(np.log(x)) > 1e-3)
    res = fk.stats.fit(fk.stats.Weibull(), x)
    k, lam = res.params
    # ∂ℓ/∂λ = 0 ⇔ λᵏ = mean xᵏ;  ∂ℓ/∂k = 0 ⇔ Σ xᵏ log x / Σ xᵏ − 1/k = mean log x
    z = np.log(x / x.max())
    w = np.exp(k * z)
    assert np.sum(w * z) / np.sum(w) - 1 / k == pytest.approx(np.mean(z), abs=1e-9 * (1 + abs(np.mean(z))))
    assert lam == pytest.approx(x.max() * np.mean(w) ** (1 / k), rel=1e-9)
    # and it maximises scipy's log-likelihood: nearby values are not better
    ll = lambda kk, ll_: stats.weibull_min.logpdf(x, kk, scale=ll_).sum()
    for dk, dl in [(1.001, 1), (0.999, 1), (1, 1.001), (1, 0.999)]:
        assert ll(k * dk, lam * dl) <= ll(k, lam) + 1e-9 * abs(ll(k, lam))


@st.composite
def glm_problems(draw):
    n = draw(st.integers(2, 25))
    d = draw(st.integers(1, 3))
    cells = st.floats(-5, 5, allow_nan=False, allow_infinity=False)
    X = np.array(draw(st.lists(st.lists(cells, min_size=d, max_size=d), min_size=n, max_size=n)))
    if draw(st.booleans()):  # make a column (nearly) a copy of another
        X[:, -1] = X[:, 0] + draw(st.sampled_from([0.0, 1e-12, 1e-9, 1e-6])) * np.arange(n)
    counts = draw(st.booleans())
    y = np.array(draw(st.lists(st.integers(0, 6 if counts else 1), min_size=n, max_size=n)), dtype=float)
    return X, y, counts


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(glm_problems())
def test_glm_either_solves_its_score_equations_or_raises_a_fisherkit_error(problem):
    """Random small designs (including constant, duplicated and nearly collinear columns,
    separated classes, all-zero counts): the fit either satisfies Xᵀ(y − μ̂) = 0 with finite,
    positive standard errors, or raises a FisherkitError subclass — no other exception."""
    X, y, counts = problem
    model = fk.stats.PoissonRegression() if counts else fk.stats.LogisticRegression()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "did not converge" is allowed, not hidden
        try:
            model.fit(X, y)
        except FisherkitError:
            return
    Xc = np.column_stack([np.ones(len(y)), X])
    score = Xc.T @ (y - model.predict(X))
    scale = np.abs(Xc).sum(0) + 1
    if model.converged:
        assert np.all(np.abs(score) <= 1e-6 * scale), score
    assert np.all(np.isfinite(model.bse)) and np.all(model.bse > 0)
