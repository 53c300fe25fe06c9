"""Seeded simulations: Wald coverage, profile beats Wald near the boundary, Cramér–Rao."""

import warnings

import numpy as np
import pytest
from scipy import stats

import fisherkit as fk
from fisherkit.stats import families as F


def test_wald_intervals_cover_about_95_percent():
    """2,000 replications of n = 60 draws from Exponential(rate 2): 95 % Wald intervals (expected
    information) cover the true rate in 93–97 % of them (binomial sd of the rate ≈ 0.5 %)."""
    rng = np.random.default_rng(2024)
    samples = rng.exponential(0.5, size=(2000, 60))
    covered = 0
    for x in samples:
        lo, hi = fk.stats.fit(F.Exponential(), x).conf_int(0.05)[0]
        covered += lo <= 2.0 <= hi
    assert 0.93 <= covered / 2000 <= 0.97


def test_wald_coverage_for_a_two_parameter_family():
    """Normal(μ = 1, σ = 3), n = 80, 2,000 replications: the 95 % Wald intervals of μ and of σ
    (expected information) each cover in 93–97 % of them."""
    rng = np.random.default_rng(11)
    samples = rng.normal(1.0, 3.0, size=(2000, 80))
    ci = np.array([fk.stats.fit(F.Normal(), x).conf_int() for x in samples])  # (2000, 2, 2)
    truth = np.array([1.0, 3.0])
    coverage = np.mean((ci[:, :, 0] <= truth) & (truth <= ci[:, :, 1]), axis=0)
    assert np.all((0.93 <= coverage) & (coverage <= 0.97)), coverage


def test_profile_beats_wald_for_a_rare_event():
    """Bernoulli p = 0.05, n = 30: p̂ = 0 happens 21 % of the time, where the Wald interval
    collapses (undefined, counted as not covering). The profile interval stays close to 95 %.
    The interval depends on the data only through k = Σx, so we fit every k once and look up."""
    n, p = 30, 0.05
    wald, prof = {}, {}
    for k in range(n + 1):
        x = np.r_[np.ones(k), np.zeros(n - k)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", fk.stats.BoundaryWarning)
            res = fk.stats.fit(F.Bernoulli(), x)
        prof[k] = res.conf_int(0.05, "profile")[0]
        wald[k] = None if res.boundary else res.conf_int(0.05, "wald")[0]
    covers = lambda ci: ci is not None and ci[0] <= p <= ci[1]
    ks = np.random.default_rng(5).binomial(n, p, size=4000)  # 4,000 seeded replications
    wald_cov = np.mean([covers(wald[k]) for k in ks])
    prof_cov = np.mean([covers(prof[k]) for k in ks])
    # exact coverages by enumeration over k (an independent check of the simulation)
    pmf = stats.binom.pmf(np.arange(n + 1), n, p)
    wald_exact = sum(pmf[k] for k in range(n + 1) if covers(wald[k]))
    prof_exact = sum(pmf[k] for k in range(n + 1) if covers(prof[k]))
    assert abs(wald_cov - wald_exact) < 0.02 and abs(prof_cov - prof_exact) < 0.02
    assert wald_exact < 0.85  # Wald fails badly here
    assert prof_exact > 0.9
    assert prof_cov > wald_cov + 0.1


def test_mle_variance_attains_the_cramer_rao_bound():
    """Poisson λ̂ = x̄ is unbiased and efficient: var(λ̂) over 4,000 seeded replications equals
    (n I(λ))⁻¹ = λ/n within 10 % (the sampling sd of a variance estimate here is ≈ 2 %)."""
    lam, n = 3.0, 25
    means = np.random.default_rng(8).poisson(lam, size=(4000, n)).mean(axis=1)
    bound = fk.stats.cramer_rao_bound(F.Poisson(), [lam], n=n)[0, 0]
    assert np.var(means) == pytest.approx(bound, rel=0.1)
