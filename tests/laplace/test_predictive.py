"""Predictives: the probit formula, Monte Carlo vs quadrature, sampled networks vs the GLM, the
last-layer feature path vs brute-force Jacobians (also at 1,000 classes, without Jacobians)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import fisherkit as fk
from fisherkit.laplace import Laplace

from .laplace_fixtures import brute_jacobian, cnn, mlp


def test_probit_is_the_extended_probit_formula():
    m, X, y = mlp()
    la = Laplace(m, "categorical", structure="dense", prior_precision=0.5).fit((X, y))
    J = brute_jacobian(m, la.names, X[:6])
    v = (J @ torch.linalg.inv(la.precision_matrix()) @ J.transpose(1, 2)).diagonal(dim1=1, dim2=2)
    ref = torch.softmax(m(X[:6]).detach() / torch.sqrt(1 + math.pi / 8 * v), -1)
    torch.testing.assert_close(la.predictive(X[:6], "probit"), ref, rtol=1e-10, atol=1e-12)


def test_bernoulli_mc_and_probit_against_gauss_hermite():
    """E[σ(f)], f ~ N(μ, v): Gauss–Hermite (80 nodes) is the reference; MC with 200,000 draws within
    5e-3 (≈ 10 standard errors), the probit approximation within 0.02 (its known accuracy)."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    g = torch.Generator().manual_seed(2)
    X = torch.randn(25, 2, generator=g, dtype=torch.float64)
    y = (torch.rand(25, 1, generator=g, dtype=torch.float64) < 0.5).double()
    la = Laplace(m, "bernoulli", structure="dense", prior_precision=0.05).fit((X, y))
    f, fvar = la.functional_variance(X[:5])
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    mu, sd = f[:, 0].numpy(), np.sqrt(fvar[:, 0, 0].numpy())
    ref = (weights[None] / np.sqrt(2 * np.pi) / (1 + np.exp(-(mu[:, None] + sd[:, None] * nodes[None])))).sum(1)
    assert sd.max() > 1.0  # a regime where the variance matters
    mc = la.predictive(X[:5], "mc", n_samples=200_000, generator=torch.Generator().manual_seed(0))[:, 0].numpy()
    np.testing.assert_allclose(mc, ref, atol=5e-3)
    np.testing.assert_allclose(la.predictive(X[:5], "probit")[:, 0].numpy(), ref, atol=0.02)


def test_sampled_networks_equal_the_glm_for_the_last_layer():
    """The network is linear in its last layer: sampled networks and the MC GLM agree (20,000 draws)."""
    m, X, y = mlp()
    la = Laplace(m, "categorical", subset="last_layer", structure="kfac", prior_precision=0.2).fit((X, y))
    a = la.predictive(X[:5], "samples", n_samples=20_000, generator=torch.Generator().manual_seed(0))
    b = la.predictive(X[:5], "mc", n_samples=20_000, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b, atol=0.01, rtol=0)


class Wrapped(nn.Module):  # not a Sequential: the generic (torch.func Jacobian) path
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


@pytest.mark.parametrize("structure", ["kfac", "diag", "dense", "lowrank", "ekfac"])
@pytest.mark.parametrize("subset", ["last_layer", "all"])
def test_sequential_rank_one_path_matches_jacobians(structure, subset, monkeypatch):
    """Linear layers of a Sequential use J = B ⊗ ã (no Jacobians); the wrapped model uses torch.func."""
    m, X, y = mlp()
    la = Laplace(m, "categorical", subset=subset, structure=structure, prior_precision=0.4).fit((X, y))
    w = Laplace(Wrapped(m), "categorical", subset=subset, structure=structure, prior_precision=0.4).fit((X, y))
    f2, v2 = w.functional_variance(X[:6])
    torch.testing.assert_close(w.functional_variance(X[:6], diagonal=True)[1], v2.diagonal(dim1=1, dim2=2))
    monkeypatch.setattr(fk.laplace.laplace, "jacobians", None)  # the Sequential path must not need them
    f1, v1 = la.functional_variance(X[:6])
    torch.testing.assert_close(v1, v2, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(f1, f2)


def test_last_layer_with_1000_classes_uses_features_only(monkeypatch):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 1), nn.Tanh(), nn.Linear(1, 1000)).double().eval()
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 1000, (64,), generator=g)
    monkeypatch.setattr(fk.laplace.laplace, "jacobians", None)
    la = Laplace(m, "categorical", subset="last_layer", structure="kfac", kind="mc", prior_precision=1.0,
                 generator=torch.Generator().manual_seed(5)).fit((X, y))
    f, fvar = la.functional_variance(X[:2])
    monkeypatch.undo()
    # reference: (N·G ⊗ A + I)⁻¹ formed densely from the KFAC factors, J = I_C ⊗ [φ, 1] by hand
    F = fk.fisher(m, (X, y), structure="kfac", kind="mc", params=la.names, generator=torch.Generator().manual_seed(5))
    A, G = F.factors()["2.weight"]
    cov = torch.linalg.inv(F.num_samples * torch.kron(G, A) + torch.eye(2000, dtype=torch.float64))
    with torch.no_grad():
        phi = torch.cat([torch.tanh(m[0](X[:2])), torch.ones(2, 1, dtype=torch.float64)], 1)
    J = torch.einsum("cd,bi->bcdi", torch.eye(1000, dtype=torch.float64), phi).reshape(2, 1000, 2000)
    torch.testing.assert_close(fvar, J @ cov @ J.transpose(1, 2), rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("structure", ["kfac", "diag", "dense", "ekfac"])
@pytest.mark.parametrize("subset", ["last_layer", "all"])
@pytest.mark.parametrize("make", [mlp, cnn])
def test_centred_variance_is_pi_j_cov_j_pi_by_brute_force(make, subset, structure):
    """functional_variance(centred=True) = (ΠJ) Λ⁻¹ (ΠJ)ᵀ, Π = I − 11ᵀ/C, J by brute-force torch.func
    Jacobians and Λ as a dense matrix; both the Sequential rank-one path (MLP) and the Jacobian path (conv)."""
    m, X, y = make()
    la = Laplace(m, "categorical", subset=subset, structure=structure, prior_precision=0.4).fit((X, y))
    J = brute_jacobian(m, la.names, X[:6])
    C = J.shape[1]
    PJ = (torch.eye(C, dtype=J.dtype) - 1.0 / C) @ J
    ref = PJ @ torch.linalg.inv(la.precision_matrix()) @ PJ.transpose(1, 2)
    f, v = la.functional_variance(X[:6], centred=True)
    torch.testing.assert_close(v, ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(la.functional_variance(X[:6], centred=True, diagonal=True)[1], ref.diagonal(dim1=1, dim2=2),
                               rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(f, m(X[:6]).detach())
    probs = la.predictive(X[:6], "probit_centred")
    kappa = 1 / torch.sqrt(1 + math.pi / 8 * ref.diagonal(dim1=1, dim2=2))
    torch.testing.assert_close(probs, torch.softmax(kappa * f, -1), rtol=1e-10, atol=1e-12)


def test_centring_changes_nothing_the_softmax_sees():
    """softmax(f) = softmax(Πf): Monte Carlo over N(f̂, V) and over N(f̂, ΠVΠ) agree (200,000 draws),
    while the plain probit (diag V) and the centred one (diag ΠVΠ) differ: the variance of the common
    shift 1ᵀf/C, which the softmax ignores, is in the first only."""
    from fisherkit.laplace.predictive import monte_carlo, probit

    m, X, y = mlp()
    la = Laplace(m, "categorical", subset="last_layer", structure="kfac", prior_precision=0.05).fit((X, y))
    f, V = la.functional_variance(X[:5])
    _, Vc = la.functional_variance(X[:5], centred=True)
    a = monte_carlo(f, V, "categorical", 200_000, torch.Generator().manual_seed(0))
    b = monte_carlo(f, Vc, "categorical", 200_000, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b, atol=5e-3, rtol=0)
    assert float((probit(f, V, "categorical") - probit(f, Vc, "categorical")).abs().max()) > 0.02
    # the centred probit is the closer approximation of the MC reference here
    err_plain = float((probit(f, V, "categorical") - a).abs().max())
    err_centred = float((probit(f, Vc, "categorical") - a).abs().max())
    assert err_centred < err_plain


def test_probit_centred_is_refused_for_other_likelihoods():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(2, 1)).double()
    X = torch.randn(10, 2, dtype=torch.float64)
    y = (X[:, :1] > 0).double()
    la = Laplace(m, "bernoulli", structure="dense").fit((X, y))
    with pytest.raises(fk.laplace.LaplaceError, match="categorical"):
        la.predictive(X, "probit_centred")
    with pytest.raises(fk.laplace.LaplaceError, match="categorical"):
        la.optimize_prior_precision("cv", val_data=(X, y), predictive="probit_centred")
