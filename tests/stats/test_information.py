"""Generic autodiff Fisher information = closed forms (enumeration/quadrature to 1e-8; Monte Carlo
to a stated tolerance), for every family, both as E[s sᵀ] and as −E[∇² log p]."""

import math

import numpy as np
import pytest
import torch

import fisherkit as fk
from fisherkit.stats import families as F

CASES = [
    (F.Bernoulli(), [0.3]),
    (F.Binomial(12), [0.7]),
    (F.Categorical(4), [0.1, 0.2, 0.3]),
    (F.Multinomial(5, 3), [0.2, 0.5]),
    (F.Poisson(), [4.0]),
    (F.Poisson(), [250.0]),
    (F.Geometric(), [0.25]),
    (F.Normal(), [1.5, 2.0]),
    (F.Normal(), [100.0, 0.01]),
    (F.Exponential(), [2.5]),
    (F.Gamma(), [0.5, 2.0]),
    (F.Gamma(), [3.0, 0.5]),
    (F.Beta(), [2.0, 3.0]),
    (F.Beta(), [0.5, 1.5]),
]


def _ids(c):
    return getattr(c, "name", None)


@pytest.mark.parametrize("family, theta", CASES, ids=_ids)
def test_exact_expectation_matches_closed_form(family, theta):
    closed = family.fisher_information(theta)
    by_score, by_hessian = fk.stats.fisher_information(family, theta, form="both")
    scale = np.abs(closed).max()
    assert np.abs(by_score - closed).max() <= 1e-8 * scale
    assert np.abs(by_hessian - closed).max() <= 1e-8 * scale


def test_closed_forms_by_hand():
    # independent of the implementation: the textbook formulas at specific values
    assert F.Bernoulli().fisher_information(0.5)[0, 0] == pytest.approx(4.0)
    assert F.Binomial(10).fisher_information(0.6)[0, 0] == pytest.approx(10 / 0.24)
    assert F.Poisson().fisher_information(4.0)[0, 0] == pytest.approx(0.25)
    np.testing.assert_allclose(F.Normal().fisher_information([0, 2.0]), np.diag([0.25, 0.5]))
    np.testing.assert_allclose(F.Categorical(3).fisher_information([0.2, 0.3]),
                               [[1 / 0.2 + 2, 2], [2, 1 / 0.3 + 2]])
    trigamma_1 = math.pi**2 / 6
    np.testing.assert_allclose(F.Gamma().fisher_information([1.0, 2.0]), [[trigamma_1, -0.5], [-0.5, 0.25]])


@pytest.mark.parametrize(
    "family, theta",
    [(F.Poisson(), [3.0]), (F.Normal(), [0.5, 1.5]), (F.Gamma(), [2.0, 1.0]), (F.Categorical(3), [0.2, 0.3])],
    ids=_ids,
)
def test_monte_carlo_matches_closed_form_within_stated_tolerance(family, theta):
    """200,000 seeded draws; each entry's MC standard error is ≲ 0.5 % here, we allow 3 %."""
    closed = family.fisher_information(theta)
    by_score, by_hessian = fk.stats.fisher_information(family, theta, method="mc", form="both",
                                                       mc_samples=200_000, seed=0)
    np.testing.assert_allclose(by_score, closed, rtol=0.03, atol=0.03 * np.abs(closed).max())
    np.testing.assert_allclose(by_hessian, closed, rtol=0.03, atol=0.03 * np.abs(closed).max())
    again = fk.stats.fisher_information(family, theta, method="mc", mc_samples=200_000, seed=0)
    np.testing.assert_array_equal(again, by_score)  # seeded


def _rayleigh():
    return fk.stats.Family.from_logpdf(
        lambda x, s: torch.log(x) - 2 * torch.log(s) - x**2 / (2 * s**2),
        ["s"], support="positive", bounds=[(0, math.inf)], name="Rayleigh",
        sampler=lambda t, n, rng: rng.rayleigh(t[0], n),
    )


def test_custom_family_fisher_by_quadrature_and_mc():
    rayleigh = _rayleigh()
    # closed form for the Rayleigh scale: I(s) = 4 / s²
    assert rayleigh.fisher_information([2.0])[0, 0] == pytest.approx(1.0, rel=1e-8)
    hess = fk.stats.fisher_information(rayleigh, [0.7], form="hessian")[0, 0]
    assert hess == pytest.approx(4 / 0.49, rel=1e-8)
    mc = fk.stats.fisher_information(rayleigh, [2.0], method="mc", mc_samples=100_000)[0, 0]
    assert mc == pytest.approx(1.0, rel=0.03)


def test_custom_discrete_family_matches_builtin():
    # a negative-binomial-free check: Poisson re-declared from its log-pmf alone
    pois = fk.stats.Family.from_logpdf(lambda x, lam: x * torch.log(lam) - lam - torch.lgamma(x + 1),
                                       ["lam"], support="nonnegative_integers", bounds=[(0, math.inf)])
    np.testing.assert_allclose(pois.fisher_information([6.0]), [[1 / 6.0]], rtol=1e-10)
    res = fk.stats.fit(pois, [3, 1, 4, 1, 5])
    assert res.params[0] == pytest.approx(2.8, rel=1e-9)  # numerical MLE = mean
    assert res.se[0] == pytest.approx(math.sqrt(2.8 / 5), rel=1e-7)


def test_unnormalised_custom_density_is_refused():
    bad = fk.stats.Family.from_logpdf(lambda x, mu: -(x - mu) ** 2, ["mu"])  # missing −½log π
    with pytest.raises(fk.FisherkitError, match="not 1"):
        bad.fisher_information([0.0])


def test_cramer_rao_bound_and_boundary():
    np.testing.assert_allclose(fk.stats.cramer_rao_bound(F.Poisson(), [3.0], n=30), [[0.1]])
    with pytest.raises(fk.FisherkitError, match="boundary"):
        fk.stats.fisher_information(F.Bernoulli(), [0.0])
    with pytest.raises(fk.FisherkitError, match="method"):
        fk.stats.fisher_information(F.Poisson(), [1.0], method="simpson")
    with pytest.raises(fk.FisherkitError, match="continuous"):
        fk.stats.fisher_information(F.Normal(), [0.0, 1.0], method="enumerate")
