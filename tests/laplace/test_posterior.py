"""The posterior precision and everything derived from it, against brute-force float64 references.

Reference for structure "dense": Λ = Σₙ Jₙᵀ Λₙ Jₙ + diag(p) from per-sample torch.func Jacobians
(``laplace_fixtures.brute_ggn``). For the structured posteriors (diag, kfac, ...): the same
operations on the dense matrix N·F.to_dense() + diag(p) with torch.linalg (slogdet, inv).
"""

import math

import pytest
import torch

import fisherkit as fk
from fisherkit.laplace import Laplace

from .laplace_fixtures import brute_ggn, brute_jacobian, cnn, mlp

STRUCTS = ["diag", "kfac", "ekfac", "block", "dense", "lowrank"]


def test_dense_precision_is_the_ggn_plus_prior():
    m, X, y = mlp()
    la = Laplace(m, "categorical", structure="dense", prior_precision=0.7).fit((X, y))
    names = [n for n, _ in m.named_parameters()]
    ref = brute_ggn(m, names, X) + 0.7 * torch.eye(la.n_params, dtype=torch.float64)
    torch.testing.assert_close(la.precision_matrix(), ref, rtol=1e-10, atol=1e-10)


def _structured_dense(m, X, y, structure, subset, names):
    F = fk.fisher(m, (X, y), structure=structure, params=names, rank=10_000)
    return F.num_samples * F.to_dense()


@pytest.mark.parametrize("structure", STRUCTS)
@pytest.mark.parametrize("subset", ["all", "last_layer"])
def test_operations_match_dense_linear_algebra(structure, subset):
    m, X, y = mlp()
    la = Laplace(m, "categorical", subset=subset, structure=structure, prior_precision=0.3, rank=10_000).fit((X, y))
    H = _structured_dense(m, X, y, structure, subset, la.names)
    prec = H + 0.3 * torch.eye(la.n_params, dtype=torch.float64)
    cov = torch.linalg.inv(prec)
    torch.testing.assert_close(la.precision_matrix(), prec, rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(la.log_det_posterior_precision(), torch.linalg.slogdet(prec)[1], rtol=1e-9, atol=1e-8)
    torch.testing.assert_close(la.posterior_variance(), cov.diagonal(), rtol=1e-8, atol=1e-10)
    v = torch.linspace(-1, 1, la.n_params, dtype=torch.float64)
    torch.testing.assert_close(la.solve(v), cov @ v, rtol=1e-8, atol=1e-10)
    # linearised output covariance J Λ⁻¹ Jᵀ with brute-force Jacobians
    J = brute_jacobian(m, la.names, X[:7])
    f, fvar = la.functional_variance(X[:7])
    torch.testing.assert_close(fvar, J @ cov @ J.transpose(1, 2), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(f, m(X[:7]).detach())
    torch.testing.assert_close(la.functional_variance(X[:7], diagonal=True)[1], fvar.diagonal(dim1=1, dim2=2))


@pytest.mark.parametrize("structure", ["kfac", "ekfac", "diag", "block"])
def test_conv_model(structure):
    m, X, y = cnn()
    la = Laplace(m, "categorical", structure=structure, prior_precision=2.0).fit((X, y))
    H = _structured_dense(m, X, y, structure, "all", la.names)
    prec = H + 2.0 * torch.eye(la.n_params, dtype=torch.float64)
    torch.testing.assert_close(la.log_det_posterior_precision(), torch.linalg.slogdet(prec)[1], rtol=1e-9, atol=1e-8)
    J = brute_jacobian(m, la.names, X[:4])
    torch.testing.assert_close(la.functional_variance(X[:4])[1], J @ torch.linalg.solve(prec, J.transpose(1, 2)),
                               rtol=1e-8, atol=1e-10)


def test_layerwise_prior_exact_for_kron_when_constant_per_layer():
    """A per-tensor prior with equal weight/bias values per layer is exact in the Kronecker eigenbasis."""
    m, X, y = mlp()
    pp = {"0.weight": 0.5, "0.bias": 0.5, "2.weight": 3.0, "2.bias": 3.0}
    la = Laplace(m, "categorical", structure="kfac", prior_precision=pp).fit((X, y))
    H = _structured_dense(m, X, y, "kfac", "all", la.names)
    p = torch.cat([torch.full((dict(m.named_parameters())[n].numel(),), v, dtype=torch.float64) for n, v in pp.items()])
    prec = H + torch.diag(p)
    torch.testing.assert_close(la.log_det_posterior_precision(), torch.linalg.slogdet(prec)[1], rtol=1e-9, atol=1e-8)
    torch.testing.assert_close(la.posterior_variance(), torch.linalg.inv(prec).diagonal(), rtol=1e-8, atol=1e-10)


def test_diagonal_prior_exact_for_dense_and_diag():
    m, X, y = mlp()
    g = torch.Generator().manual_seed(3)
    for structure in ("dense", "diag", "block"):
        la0 = Laplace(m, "categorical", structure=structure)
        p = 0.1 + torch.rand(la0.n_params, generator=g, dtype=torch.float64)
        la = Laplace(m, "categorical", structure=structure, prior_precision=p).fit((X, y))
        prec = _structured_dense(m, X, y, structure, "all", la.names) + torch.diag(p)
        torch.testing.assert_close(la.log_det_posterior_precision(), torch.linalg.slogdet(prec)[1], rtol=1e-9, atol=1e-8)
        torch.testing.assert_close(la.posterior_variance(), torch.linalg.inv(prec).diagonal(), rtol=1e-8, atol=1e-10)
        z = la.sample(1, generator=torch.Generator().manual_seed(0))
        assert z.shape == (1, la.n_params)


@pytest.mark.parametrize("structure", ["kfac", "dense", "lowrank"])
def test_samples_have_the_posterior_covariance(structure):
    """Simulation: the covariance of 40,000 draws matches Λ⁻¹ (max abs error < 6 % of the largest variance)."""
    m, X, y = mlp(n=15)
    la = Laplace(m, "categorical", subset="last_layer", structure=structure, prior_precision=1.0, rank=8).fit((X, y))
    draws = la.sample(40_000, generator=torch.Generator().manual_seed(1))
    emp = torch.cov(draws.T)
    cov = torch.linalg.inv(la.precision_matrix()) if structure != "lowrank" else None
    if cov is None:  # low rank: Λ = U diag(Nλ) Uᵀ + pI, inverted densely
        cov = torch.linalg.inv(la.precision_matrix())
    assert float((emp - cov).abs().max()) < 0.06 * float(cov.diagonal().max())
    torch.testing.assert_close(draws.mean(0), la.mean, atol=0.03 * math.sqrt(float(cov.diagonal().max())) * 4, rtol=0)


def test_lowrank_rejects_a_nonscalar_prior():
    m, X, y = mlp()
    la = Laplace(m, "categorical", structure="lowrank", prior_precision=[1.0, 2.0, 3.0, 4.0]).fit((X, y))
    with pytest.raises(fk.laplace.LaplaceError, match="scalar"):
        la.log_marginal_likelihood()
