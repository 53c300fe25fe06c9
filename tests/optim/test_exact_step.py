"""The natural-gradient step against the closed-form Fisher of a linear-Gaussian model (float64).

Reference: for f = W x + b and y ~ N(f, σ²I), F = (I/σ²) ⊗ (X̃ᵀX̃/N) exactly (x̃ = [x, 1]); every
structure that can represent it (dense, kfac, ekfac, implicit) must step by −lr (F + λI)⁻¹ g.
"""

import math

import pytest
import torch

import fisherkit as fk
from fisherkit.optim import NaturalGradient, Preconditioner

from .optim_fixtures import closed_form_fisher, flat_grads, flat_params, gaussian_loss, linear_gaussian


def one_step(structure, damping=1e-9, lr=1.0, **kw):
    model, X, Y, sigma = linear_gaussian()
    opt = NaturalGradient(model, lr=lr, structure=structure, kind="exact", damping=damping, update_every=1, ema=0.0,
                          likelihood=fk.Gaussian(sigma), **kw)
    before = flat_params(model)
    opt.zero_grad()
    gaussian_loss(model, X, Y, sigma).backward()
    g = flat_grads(model)
    opt.step()
    return model, X, Y, sigma, before, g, flat_params(model) - before, opt


@pytest.mark.parametrize("structure,kw", [("dense", {}), ("kfac", {"pi_damping": False}), ("kfac", {"damping": 1e-16}),
                                          ("ekfac", {}), ("implicit", {"cg_iters": 50})])
def test_step_is_inverse_fisher_times_gradient(structure, kw):
    model, X, Y, sigma, _, g, step, _ = one_step(structure, **kw)
    F = closed_form_fisher(X, Y.shape[1], sigma)
    expected = -torch.linalg.solve(F, g)
    assert torch.allclose(step, expected, rtol=1e-6, atol=1e-9), (step - expected).abs().max()


def test_damped_step_matches_tikhonov_closed_form():
    _, X, Y, sigma, _, g, step, _ = one_step("dense", damping=0.3, lr=0.5)
    F = closed_form_fisher(X, Y.shape[1], sigma)
    expected = -0.5 * torch.linalg.solve(F + 0.3 * torch.eye(F.shape[0], dtype=F.dtype), g)
    assert torch.allclose(step, expected, rtol=1e-10, atol=1e-12)


def test_kfac_pi_damping_closed_form():
    """π-damping: (G + √λ/π I)⁻¹ ⊗ (A + π√λ I)⁻¹ with π from the traces (Martens & Grosse §6.3)."""
    lam = 0.2
    model, X, Y, sigma, _, g, step, _ = one_step("kfac", damping=lam)
    n, d_in = X.shape
    d_out = Y.shape[1]
    Xt = torch.cat([X, X.new_ones(n, 1)], 1)
    A = Xt.T @ Xt / n
    G = torch.eye(d_out, dtype=X.dtype) / sigma**2
    pi = math.sqrt((A.trace() / A.shape[0]) / (G.trace() / G.shape[0]))
    Ad = A + pi * math.sqrt(lam) * torch.eye(A.shape[0], dtype=X.dtype)
    Gd = G + math.sqrt(lam) / pi * torch.eye(d_out, dtype=X.dtype)
    gW, gb = g[: d_out * d_in].reshape(d_out, d_in), g[d_out * d_in:]
    M = torch.cat([gW, gb[:, None]], 1)
    P = torch.linalg.solve(Gd, M) @ torch.linalg.inv(Ad)
    expected = -torch.cat([P[:, :-1].reshape(-1), P[:, -1]])
    assert torch.allclose(step, expected, rtol=1e-10, atol=1e-12)


def test_diag_structure_uses_the_fisher_diagonal():
    lam = 1e-3
    _, X, Y, sigma, _, g, step, _ = one_step("diag", damping=lam)
    F = closed_form_fisher(X, Y.shape[1], sigma)
    assert torch.allclose(step, -g / (F.diagonal() + lam), rtol=1e-10)


def test_preconditioner_replaces_grad_in_front_of_sgd():
    model, X, Y, sigma = linear_gaussian()
    pre = Preconditioner(model, structure="kfac", kind="exact", likelihood=fk.Gaussian(sigma), damping=1e-9,
                         pi_damping=False, ema=0.0)
    sgd = torch.optim.SGD(model.parameters(), lr=0.7)
    before = flat_params(model)
    sgd.zero_grad()
    gaussian_loss(model, X, Y, sigma).backward()
    g = flat_grads(model)
    pre.step()
    nat = flat_grads(model)
    sgd.step()
    F = closed_form_fisher(X, Y.shape[1], sigma)
    assert torch.allclose(nat, torch.linalg.solve(F, g), rtol=1e-6)
    assert torch.allclose(flat_params(model) - before, -0.7 * nat, rtol=1e-12)


def test_empirical_kind_rescales_mean_loss_gradients():
    """For a linear model, empirical KFAC's G = mean rₙrₙᵀ with rₙ = (fₙ − yₙ)/σ² (not /B)."""
    model, X, Y, sigma = linear_gaussian()
    pre = Preconditioner(model, structure="kfac", kind="empirical", likelihood=fk.Gaussian(sigma), ema=0.0)
    gaussian_loss(model, X, Y, sigma).backward()
    with torch.no_grad():
        r = (model(X) - Y) / sigma**2
    pre.step()
    G = next(iter(pre.curvature.factors().values()))[1]
    assert torch.allclose(G, r.T @ r / X.shape[0], rtol=1e-12)
    # the same statistic summed: loss_reduction="sum" with a summed loss gives the same G
    model2, *_ = linear_gaussian()
    pre2 = Preconditioner(model2, structure="kfac", kind="empirical", likelihood=fk.Gaussian(sigma), ema=0.0,
                          loss_reduction="sum")
    (gaussian_loss(model2, X, Y, sigma) * X.shape[0]).backward()
    pre2.step()
    assert torch.allclose(next(iter(pre2.curvature.factors().values()))[1], G, rtol=1e-12)


@pytest.mark.parametrize("bad", [0.0, -1e-6, float("nan"), float("inf"), "1e-6", True])
def test_bad_cg_tol_refused_before_any_hook(bad):
    model, *_ = linear_gaussian()
    with pytest.raises(fk.FisherkitError, match="cg_tol"):
        NaturalGradient(model, structure="implicit", cg_tol=bad)
    assert not model._forward_hooks and not model._forward_pre_hooks  # nothing was installed
    with pytest.raises(fk.FisherkitError, match="cg_tol"):
        Preconditioner(model, structure="implicit", cg_tol=bad)


def test_cg_tol_reaches_the_solver():
    """Reference: conjugate gradients from x₀ = 0 take, as their first iterate, the exact line search along g,
    x₁ = (gᵀg / gᵀAg) g with A = F + λI (closed-form F), and stop there when ‖g − A x₁‖ ≤ cg_tol · ‖g‖.
    A tolerance between ‖r₁‖/‖g‖ and 1 must give exactly x₁; the default tolerance gives A⁻¹g."""
    lam = 0.05
    model, X, Y, sigma = linear_gaussian()
    model.zero_grad()
    gaussian_loss(model, X, Y, sigma).backward()
    g = flat_grads(model)
    A = closed_form_fisher(X, Y.shape[1], sigma) + lam * torch.eye(g.numel(), dtype=g.dtype)
    x1 = (g @ g) / (g @ A @ g) * g
    r1 = (g - A @ x1).norm() / g.norm()
    assert r1 < 0.9  # so a tolerance in between exists
    for tol, expected in ((0.5 * (1 + float(r1)), x1), (1e-10, torch.linalg.solve(A, g))):
        _, _, _, _, _, g_, step, opt = one_step("implicit", damping=lam, cg_tol=tol, cg_iters=100)
        assert opt.pre.cg_tol == tol
        assert torch.allclose(g_, g)
        assert torch.allclose(step, -expected, rtol=1e-8, atol=1e-12), (step + expected).abs().max()
