"""Evidence and prior tuning against the closed form of Bayesian linear regression.

For f(x) = wᵀx with a Gaussian likelihood (noise σ) and prior N(0, α⁻¹I), the Laplace
approximation is exact at the MAP ŵ = (XᵀX + ασ²I)⁻¹Xᵀy: log p(y) = log N(y; 0, σ²I + XXᵀ/α),
and the predictive at x* is N(x*ᵀŵ, x*ᵀΣx* + σ²) with Σ = (XᵀX/σ² + αI)⁻¹.
"""

import math

import pytest
import torch
from scipy import optimize

from fisherkit.laplace import Laplace

from .laplace_fixtures import mlp


def _data(n=40, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = X @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)[:d] + 0.3 * torch.randn(n, generator=g, dtype=torch.float64)
    return X, y[:, None]


def _linear_at_map(X, y, alpha, sigma):
    d = X.shape[1]
    w = torch.linalg.solve(X.T @ X + alpha * sigma**2 * torch.eye(d, dtype=X.dtype), X.T @ y)
    m = torch.nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        m.weight.copy_(w.T)
    return m


def _exact_evidence(X, y, alpha, sigma):
    n = X.shape[0]
    K = sigma**2 * torch.eye(n, dtype=X.dtype) + X @ X.T / alpha
    return float(torch.distributions.MultivariateNormal(torch.zeros(n, dtype=X.dtype), K).log_prob(y[:, 0]))


@pytest.mark.parametrize("structure", ["dense", "kfac", "diag"])
def test_evidence_and_predictive_are_exact_for_linear_gaussian(structure):
    X, y = _data(d=3 if structure != "diag" else 1)
    alpha, sigma = 0.8, 0.4
    m = _linear_at_map(X, y, alpha, sigma)
    la = Laplace(m, "gaussian", structure=structure, prior_precision=alpha, sigma=sigma).fit((X, y))
    assert float(la.log_marginal_likelihood()) == pytest.approx(_exact_evidence(X, y, alpha, sigma), rel=1e-10)
    xs = torch.randn(5, X.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    Sigma = torch.linalg.inv(X.T @ X / sigma**2 + alpha * torch.eye(X.shape[1], dtype=X.dtype))
    mean, var = la.predictive(xs)
    torch.testing.assert_close(mean, xs @ m.weight.detach().T)
    torch.testing.assert_close(var[:, 0], (xs @ Sigma * xs).sum(1) + sigma**2, rtol=1e-10, atol=1e-12)


def test_evidence_in_other_prior_and_sigma_is_the_laplace_formula():
    """Away from the MAP the Laplace evidence keeps θ̂ fixed: check against the formula by hand."""
    X, y = _data()
    m = _linear_at_map(X, y, 1.0, 0.5)
    la = Laplace(m, "gaussian", structure="dense", sigma=0.5).fit((X, y))
    w = m.weight.detach().reshape(-1)
    for alpha, sigma in [(0.1, 0.3), (5.0, 1.2)]:
        r = y[:, 0] - X @ w
        loglik = -0.5 * float(r @ r) / sigma**2 - X.shape[0] * math.log(sigma * math.sqrt(2 * math.pi))
        prec = X.T @ X / sigma**2 + alpha * torch.eye(3, dtype=X.dtype)
        ref = loglik - 0.5 * (alpha * float(w @ w) + float(torch.logdet(prec)) - 3 * math.log(alpha))
        got = la.log_marginal_likelihood(torch.tensor(alpha, dtype=torch.float64), sigma)
        assert float(got) == pytest.approx(ref, rel=1e-12)


def test_marglik_adam_finds_the_optimum_of_the_evidence():
    """Prior and noise by gradient vs scipy's optimum of the same (Laplace) evidence."""
    X, y = _data()
    m = _linear_at_map(X, y, 1.0, 0.5)
    la = Laplace(m, "gaussian", structure="dense", sigma=0.5).fit((X, y))

    def neg(z):
        return -float(la.log_marginal_likelihood(torch.tensor(math.exp(z[0]), dtype=torch.float64), math.exp(z[1])))

    ref = optimize.minimize(neg, [0.0, math.log(0.5)], method="Nelder-Mead", options={"xatol": 1e-8, "fatol": 1e-12})
    la.optimize_prior_precision("marglik", n_steps=1000, lr=0.05, fit_sigma=True)
    assert math.log(float(la.prior_precision)) == pytest.approx(ref.x[0], abs=2e-3)
    assert math.log(la.sigma) == pytest.approx(ref.x[1], abs=2e-3)


def test_marglik_scalar_prior_satisfies_mackay_fixed_point():
    """At the optimum of a scalar prior α: α‖θ̂‖² = γ = Σᵢ hᵢ/(hᵢ + α) (diagonal H: exact stationarity)."""
    m, X, y = mlp()
    la = Laplace(m, "categorical", structure="diag").fit((X, y))
    la.optimize_prior_precision("marglik", n_steps=600, lr=0.05)
    a = float(la.prior_precision)
    var = la.posterior_variance()
    gamma = float((1 - a * var).sum())  # hᵢ/(hᵢ+α) = 1 − α/(hᵢ+α)
    assert a * float(la.mean @ la.mean) == pytest.approx(gamma, rel=1e-4)


def test_grid_picks_the_grid_maximum_and_layerwise_beats_scalar():
    m, X, y = mlp()
    la = Laplace(m, "categorical", structure="kfac").fit((X, y))
    grid = torch.logspace(-2, 2, 9, dtype=torch.float64)
    la.optimize_prior_precision("grid", grid=grid)
    vals = [float(la.log_marginal_likelihood(g)) for g in grid]
    assert float(la.prior_precision) == pytest.approx(float(grid[max(range(9), key=vals.__getitem__)]))
    scalar_best = max(vals)
    la.optimize_prior_precision("marglik", prior_structure="layerwise", n_steps=300)
    assert la.prior_precision.shape == (4,)
    assert float(la.log_marginal_likelihood()) >= scalar_best - 1e-9


def test_cv_picks_the_validation_nll_minimum():
    """Validation NLL of the closed-form linear-Gaussian predictive, minimised over the grid by hand."""
    X, y = _data(n=60)
    Xtr, ytr, Xva, yva = X[:40], y[:40], X[40:], y[40:]
    sigma = 0.3
    m = _linear_at_map(Xtr, ytr, 1.0, sigma)
    la = Laplace(m, "gaussian", structure="dense", sigma=sigma).fit((Xtr, ytr))
    grid = torch.logspace(-3, 3, 13, dtype=torch.float64)
    la.optimize_prior_precision("cv", grid=grid, val_data=(Xva, yva))
    w = m.weight.detach().T

    def val_nll(a):
        S = torch.linalg.inv(Xtr.T @ Xtr / sigma**2 + a * torch.eye(3, dtype=X.dtype))
        var = (Xva @ S * Xva).sum(1) + sigma**2
        r = yva[:, 0] - (Xva @ w)[:, 0]
        return float((0.5 * r**2 / var + 0.5 * torch.log(2 * math.pi * var)).mean())

    best = min(grid.tolist(), key=val_nll)
    assert float(la.prior_precision) == pytest.approx(best)


@pytest.mark.parametrize("predictive", ["probit", "probit_centred"])
def test_cv_classification_minimises_the_brute_force_validation_nll(predictive):
    """Categorical cv: the validation NLL of the (centred) probit predictive, from brute-force
    Jacobians and the dense precision, minimised over the grid by hand."""
    from .laplace_fixtures import brute_jacobian, mlp

    m, X, y = mlp(n=40)
    Xtr, ytr, Xva, yva = X[:25], y[:25], X[25:], y[25:]
    la = Laplace(m, "categorical", structure="dense").fit((Xtr, ytr))
    grid = torch.logspace(-2, 2, 9, dtype=torch.float64)
    la.optimize_prior_precision("cv", grid=grid, val_data=(Xva, yva), predictive=predictive)
    J = brute_jacobian(m, la.names, Xva)
    if predictive == "probit_centred":
        J = (torch.eye(J.shape[1], dtype=J.dtype) - 1.0 / J.shape[1]) @ J
    f = m(Xva).detach()
    H = la.precision_matrix() - la.prior_precision * torch.eye(la.n_params, dtype=torch.float64)

    def val_nll(a):
        v = (J @ torch.linalg.inv(H + a * torch.eye(la.n_params, dtype=torch.float64)) @ J.transpose(1, 2))
        p = torch.softmax(f / torch.sqrt(1 + math.pi / 8 * v.diagonal(dim1=1, dim2=2)), -1)
        return float(-p.gather(1, yva[:, None]).log().mean())

    vals = [val_nll(a) for a in grid.tolist()]
    assert float(la.prior_precision) == pytest.approx(grid[min(range(9), key=vals.__getitem__)].item())
    assert [h["score"] for h in la.tuning_history_] == pytest.approx([-v for v in vals], rel=1e-8)
