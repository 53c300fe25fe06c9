"""Fisher identities: MC → exact, F = −E[∇² log p], KL ≈ ½ dᵀ F d (independent references)."""

import pytest
import torch

import fisherkit as fk
from models import labels, make
from reference import brute_expected_hessian, brute_fisher, flat_params


def test_mc_converges_to_exact():
    """Seeded: with M samples the relative error of the MC diagonal falls like 1/√M (stated tolerance)."""
    m, X = make("mlp")
    exact = fk.fisher(m, (X, None), structure="diag", kind="exact").diag()
    errs = []
    for M in (10, 1000):
        g = torch.Generator().manual_seed(0)
        mc = fk.fisher(m, (X, torch.zeros(len(X))), structure="diag", kind="mc", mc_samples=M, generator=g).diag()
        errs.append(float((mc - exact).norm() / exact.norm()))
    assert errs[1] < 0.06  # about 1/√1000 times a constant of order one
    assert errs[1] < errs[0] / 4  # 100× the samples → ~10× smaller error; ask for at least 4×


def test_mc_is_reproducible_with_a_generator():
    m, X = make("mlp")
    y = torch.zeros(len(X), dtype=torch.long)
    a = fk.fisher(m, (X, y), kind="mc", generator=torch.Generator().manual_seed(5)).diag()
    b = fk.fisher(m, (X, y), kind="mc", generator=torch.Generator().manual_seed(5)).diag()
    assert torch.equal(a, b)


@pytest.mark.parametrize("lik", ["categorical", "gaussian", "bernoulli"])
def test_fisher_equals_expected_hessian(lik):
    """F = E_y[∇² nll]: exact enumeration over labels (categorical) or over all 2^C (bernoulli), closed form (gaussian)."""
    m, X = make("mlp")
    X = X[:4]
    names, theta = flat_params(m)
    from reference import nll, output_fn

    H = torch.zeros(theta.numel(), theta.numel(), dtype=torch.float64)
    for n in range(X.shape[0]):
        f_of = output_fn(m, names, X[n : n + 1])
        f = f_of(theta).detach()
        if lik == "categorical":
            ys = [(torch.tensor([c]), torch.softmax(f, -1)[0, c]) for c in range(3)]
        elif lik == "bernoulli":
            p = torch.sigmoid(f)[0]
            ys = []
            for bits in range(8):
                yb = torch.tensor([[(bits >> k) & 1 for k in range(3)]], dtype=torch.float64)
                ys.append((yb, torch.prod(torch.where(yb[0] == 1, p, 1 - p))))
        else:  # Gaussian: ∇² nll does not depend on y except through f − y, whose mean is 0
            ys = [(f.clone(), torch.tensor(1.0, dtype=torch.float64))]
        for yy, w in ys:
            H += w * torch.func.hessian(lambda t: nll(lik, f_of(t), yy))(theta)
    H /= X.shape[0]
    F = fk.fisher(m, (X, None), likelihood=lik, structure="dense").to_dense()
    if lik == "gaussian":
        # for a Gaussian, E[∇² nll] = JᵀJ + E[(f−y)]·∇²f = JᵀJ exactly
        pass
    assert float((F - H).norm() / H.norm()) < 1e-10


def test_kl_is_half_quadratic_form():
    """KL(θ, θ+εd) = ½ε² dᵀFd + O(ε³): the ratio → 1 and the error shrinks like ε."""
    m, X = make("mlp")
    F = fk.fisher(m, (X, None), structure="dense")
    _, theta = flat_params(m)
    d = torch.randn(theta.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    errs = []
    for eps in (1e-2, 1e-3):
        kl = fk.kl_divergence(m, theta, theta + eps * d, (X, None))
        q = 0.5 * eps**2 * F.quadratic_form(d)
        errs.append(abs(float(kl / q) - 1))
    assert errs[1] < 1e-2
    assert errs[1] < errs[0] / 5


def test_gaussian_linear_model_closed_form():
    """Linear model f = Wx + b with Gaussian σ: F = (1/N) Σ (x̃ x̃ᵀ) ⊗ I/σ² — KFAC and dense are exact."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2).double()
    X = torch.randn(11, 3, dtype=torch.float64)
    sigma = 0.5
    xt = torch.cat([X, torch.ones(11, 1, dtype=torch.float64)], 1)
    A = xt.T @ xt / 11
    # flat order: W (2×3, row-major) then b (2)
    full = torch.kron(torch.eye(2, dtype=torch.float64) / sigma**2, A)  # over [W | b] rows
    perm = torch.tensor([0, 1, 2, 4, 5, 6, 3, 7])
    ref = full[perm][:, perm]
    lik = fk.Gaussian(sigma)
    for s in ("dense", "kfac", "ekfac", "block"):
        F = fk.fisher(lin, (X, None), likelihood=lik, structure=s).to_dense()
        assert torch.allclose(F, ref, atol=1e-12), s
