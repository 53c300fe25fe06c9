"""Families: log-densities against scipy.stats, closed-form MLEs against numerical maximisation of
scipy's log-likelihood, seeded sampling, parameter transforms."""

import numpy as np
import pytest
import torch
from scipy import optimize, stats

import fisherkit as fk
from fisherkit.stats import families as F

# (family, θ, scipy frozen distribution, a few support points)
CASES = [
    (F.Bernoulli(), [0.3], stats.bernoulli(0.3), [0, 1]),
    (F.Binomial(7), [0.4], stats.binom(7, 0.4), [0, 3, 7]),
    (F.Poisson(), [3.5], stats.poisson(3.5), [0, 2, 11]),
    (F.Geometric(), [0.3], stats.geom(0.3), [1, 2, 9]),
    (F.Normal(), [1.5, 2.0], stats.norm(1.5, 2.0), [-3.0, 0.0, 4.2]),
    (F.Exponential(), [2.5], stats.expon(scale=1 / 2.5), [0.01, 0.7, 3.0]),
    (F.Gamma(), [2.5, 1.5], stats.gamma(2.5, scale=1 / 1.5), [0.1, 1.0, 5.0]),
    (F.Beta(), [2.0, 3.5], stats.beta(2.0, 3.5), [0.05, 0.5, 0.93]),
]


@pytest.mark.parametrize("family, theta, ref, x", CASES, ids=lambda c: getattr(c, "name", None))
def test_log_prob_matches_scipy(family, theta, ref, x):
    want = ref.logpmf(x) if family.support.discrete else ref.logpdf(x)
    np.testing.assert_allclose(family.log_prob(x, theta), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("family, theta, ref, x", CASES, ids=lambda c: getattr(c, "name", None))
def test_sampling_is_seeded_and_has_the_right_mean(family, theta, ref, x):
    a = family.sample(theta, 20_000, rng=7)
    b = family.sample(theta, 20_000, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    # sample mean within 5 standard errors of the true mean
    assert abs(a.mean() - ref.mean()) < 5 * ref.std() / np.sqrt(len(a))


def test_sampling_with_a_torch_generator_returns_a_seeded_tensor():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a, b = F.Poisson().sample([2.0], 50, rng=g1), F.Poisson().sample([2.0], 50, rng=g2)
    assert isinstance(a, torch.Tensor) and a.dtype == torch.float64
    assert torch.equal(a, b)


def test_categorical_and_multinomial_log_prob_match_scipy():
    p = np.array([0.2, 0.5, 0.3])
    np.testing.assert_allclose(F.Categorical(3).log_prob([0, 1, 2], p[:2]), np.log(p), rtol=1e-13)
    counts = np.array([[1, 2, 1], [4, 0, 0]])
    np.testing.assert_allclose(F.Multinomial(4, 3).log_prob(counts, p[:2]),
                               stats.multinomial(4, p).logpmf(counts), rtol=1e-12)


def _numerical_mle(neg_loglik, x0, bounds):
    return optimize.minimize(neg_loglik, x0, bounds=bounds, method="L-BFGS-B",
                             options={"ftol": 1e-15, "gtol": 1e-12}).x


@pytest.mark.parametrize(
    "family, theta, ref_logpdf, bounds",
    [
        (F.Poisson(), [3.0], lambda x, t: stats.poisson.logpmf(x, t[0]), [(1e-6, 50)]),
        (F.Geometric(), [0.3], lambda x, t: stats.geom.logpmf(x, t[0]), [(1e-6, 1 - 1e-6)]),
        (F.Exponential(), [2.0], lambda x, t: stats.expon.logpdf(x, scale=1 / t[0]), [(1e-6, 50)]),
        (F.Normal(), [1.0, 2.0], lambda x, t: stats.norm.logpdf(x, t[0], t[1]), [(-10, 10), (1e-3, 20)]),
        (F.Gamma(), [2.0, 3.0], lambda x, t: stats.gamma.logpdf(x, t[0], scale=1 / t[1]), [(1e-3, 50), (1e-3, 50)]),
        (F.Beta(), [2.0, 5.0], lambda x, t: stats.beta.logpdf(x, t[0], t[1]), [(1e-3, 50), (1e-3, 50)]),
    ],
    ids=lambda c: getattr(c, "name", None),
)
def test_mle_maximises_scipys_log_likelihood(family, theta, ref_logpdf, bounds):
    x = family.sample(theta, 300, rng=1)
    res = fk.stats.fit(family, x)
    ref = _numerical_mle(lambda t: -ref_logpdf(x, t).sum(), np.array(theta, float), bounds)
    np.testing.assert_allclose(res.params, ref, rtol=2e-5)
    assert res.loglik >= ref_logpdf(x, ref).sum() - 1e-9  # ours is at least as high


def test_gamma_and_beta_mle_match_scipy_fit():
    x = F.Gamma().sample([2.0, 3.0], 400, rng=2)
    a, _, scale = stats.gamma.fit(x, floc=0)
    np.testing.assert_allclose(fk.stats.fit(F.Gamma(), x).params, [a, 1 / scale], rtol=1e-4)
    y = F.Beta().sample([2.0, 5.0], 400, rng=2)
    a, b, _, _ = stats.beta.fit(y, floc=0, fscale=1)
    np.testing.assert_allclose(fk.stats.fit(F.Beta(), y).params, [a, b], rtol=1e-4)


def test_unconstrained_transforms_round_trip():
    for family, theta in [(F.Normal(), [-1.0, 0.5]), (F.Beta(), [0.3, 4.0]), (F.Categorical(4), [0.1, 0.2, 0.3])]:
        u = family.to_unconstrained(np.array(theta))
        back = family.from_unconstrained(torch.tensor(u, dtype=torch.float64)).numpy()
        np.testing.assert_allclose(back, theta, rtol=1e-13)


def test_support_parse_and_describe():
    assert fk.stats.Support.parse("positive").describe() == "the interval (0, inf)"
    assert fk.stats.Support.integers(0, 10).describe() == "integers 0..10"
    with pytest.raises(fk.FisherkitError, match="unknown support"):
        fk.stats.Support.parse("complex")
