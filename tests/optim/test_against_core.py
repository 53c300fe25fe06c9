"""Statistics captured from the user's forward/backward agree with the core's fk.fisher on the same batch.

Reference: ``fk.fisher(model, (X, y), kind="exact", structure=...)`` (itself checked against a float64
brute force in tests/core). With ema=0 and update_every=1 the optimizer's curvature is that batch's.
"""

import pytest
import torch
import torch.nn.functional as tF

import fisherkit as fk
from fisherkit.optim import Preconditioner

from .optim_fixtures import classification_data, mlp


@pytest.mark.parametrize("structure,pi", [("kfac", False), ("ekfac", False), ("diag", False), ("dense", False)])
def test_preconditioned_gradient_matches_core_solve(structure, pi):
    X, y = classification_data()
    model = mlp(hidden=6)
    lam = 1e-2
    pre = Preconditioner(model, structure=structure, kind="exact", damping=lam, ema=0.0, pi_damping=pi)
    model.zero_grad()
    tF.cross_entropy(model(X), y).backward()
    g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    pre.step()
    got = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    F = fk.fisher(model, (X, y), kind="exact", structure=structure, batch_size=len(X))
    assert torch.allclose(got, F.solve(g, lam), rtol=1e-9, atol=1e-12)
    d = torch.randn(g.shape, dtype=g.dtype, generator=torch.Generator().manual_seed(0))
    quad = pre.quad(dict(zip(pre.info.names, (t.reshape(s) for t, s in zip(torch.split(d, pre.info.numels), pre.info.shapes)))))
    assert float(quad) == pytest.approx(float(F.quadratic_form(d)), rel=1e-9)


def test_implicit_quad_matches_core_fvp():
    X, y = classification_data()
    model = mlp(hidden=6)
    pre = Preconditioner(model, structure="implicit", kind="exact", damping=1e-2, cg_iters=200, cg_tol=1e-12)
    model.zero_grad()
    tF.cross_entropy(model(X), y).backward()
    g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    pre.step()
    got = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    F = fk.fisher(model, (X, y), kind="exact", structure="dense")
    assert torch.allclose(got, F.solve(g, 1e-2), rtol=1e-6, atol=1e-9)


def test_mc_kind_is_seeded_and_unbiased():
    """kind='mc': seeded (same seed → same G); with many label draws G approaches the exact G."""
    X, y = classification_data()

    def G_of(seed, samples):
        model = mlp(hidden=6)
        pre = Preconditioner(model, structure="kfac", kind="mc", ema=0.0, seed=seed, mc_samples=samples)
        tF.cross_entropy(model(X), y).backward()
        pre.step()
        return model, list(pre.curvature.factors().values())[-1][1]

    _, G1 = G_of(5, 2)
    _, G2 = G_of(5, 2)
    _, G3 = G_of(6, 2)
    assert torch.equal(G1, G2) and not torch.equal(G1, G3)
    model, G = G_of(0, 400)
    G_exact = fk.fisher(model, (X, y), kind="exact", structure="kfac", batch_size=len(X)).factors()["2.weight"][1]
    err = float((G - G_exact).norm() / G_exact.norm())
    assert err < 0.05  # Monte-Carlo error of 400 × 64 label draws (≈ 1/√(400·64)·spread)


@pytest.mark.parametrize("structure", ["kfac", "ekfac", "diag"])
def test_conv_layers_match_core(structure):
    """Conv2d (shared positions: KFAC-expand, A averaged over patches) through the same hooks."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.Tanh(), torch.nn.Flatten(),
                                torch.nn.Linear(2 * 5 * 5, 3)).double()
    g = torch.Generator().manual_seed(1)
    X = torch.randn(12, 1, 5, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (12,), generator=g)
    lam = 1e-2
    pre = Preconditioner(model, structure=structure, kind="exact", damping=lam, ema=0.0, pi_damping=False)
    tF.cross_entropy(model(X), y).backward()
    grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    pre.step()
    got = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    F = fk.fisher(model, (X, y), kind="exact", structure=structure, batch_size=len(X))
    assert torch.allclose(got, F.solve(grad, lam), rtol=1e-9, atol=1e-12)
