"""The likelihoods' formulas against textbook closed forms and autograd (float64).

References: nll from the densities written out here (log-sum-exp, ½‖y − f‖²/σ², the Bernoulli
log-likelihood with log σ(±f)); ``residual`` = ∂nll/∂f by autograd; ``output_fisher`` = S Sᵀ = the
Hessian ∂²nll/∂f² by torch.func.hessian (label-free for these families) = E_y[r rᵀ] by enumeration
(categorical, bernoulli). Extra output dimensions [B, T, C] sum per sample.
"""

import itertools

import pytest
import torch
from torch.func import hessian

from fisherkit.likelihoods import Bernoulli, Categorical, Gaussian, get_likelihood

SIGMA = 0.7


def data(name, shape=(4, 3, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(*shape, generator=g, dtype=torch.float64) * 2
    if name == "categorical":
        y = torch.randint(0, shape[-1], shape[:-1], generator=g)
    elif name == "gaussian":
        y = torch.randn(*shape, generator=g, dtype=torch.float64)
    else:
        y = (torch.rand(*shape, generator=g, dtype=torch.float64) < 0.5).double()
    return f, y


LIKS = {"categorical": Categorical(), "gaussian": Gaussian(SIGMA), "bernoulli": Bernoulli()}


def nll_reference(name, f, y):
    if name == "categorical":
        per = torch.logsumexp(f, -1) - f.gather(-1, y.unsqueeze(-1)).squeeze(-1)
        return per.reshape(f.shape[0], -1).sum(1)
    if name == "gaussian":
        return ((y - f) ** 2).reshape(f.shape[0], -1).sum(1) / (2 * SIGMA**2)
    lp, lq = torch.nn.functional.logsigmoid(f), torch.nn.functional.logsigmoid(-f)
    return -(y * lp + (1 - y) * lq).reshape(f.shape[0], -1).sum(1)


@pytest.mark.parametrize("name", list(LIKS))
@pytest.mark.parametrize("shape", [(4, 5), (4, 3, 5)])
def test_nll_residual_and_output_fisher(name, shape):
    lik = LIKS[name]
    f, y = data(name, shape)
    assert torch.allclose(lik.nll(f, y), nll_reference(name, f, y), rtol=1e-13, atol=0)
    fr = f.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(nll_reference(name, fr, y).sum(), fr)
    assert torch.allclose(lik.residual(f, y), grad, rtol=1e-12, atol=1e-14)
    # output Fisher per position = Hessian of the nll in f at that position (for any label)
    flat_f, flat_y = f.reshape(-1, shape[-1]), y.reshape(-1, *y.shape[len(shape) - 1:])
    lam = lik.output_fisher(f).reshape(-1, shape[-1], shape[-1])
    for i in range(flat_f.shape[0]):
        H = hessian(lambda z: nll_reference(name, z[None], flat_y[i : i + 1])[0])(flat_f[i])
        assert torch.allclose(lam[i], H, rtol=1e-12, atol=1e-14)
    s = lik.sqrt_fisher(f)
    assert torch.allclose(s @ s.transpose(-1, -2), lik.output_fisher(f), rtol=1e-14, atol=0)


@pytest.mark.parametrize("name", ["categorical", "bernoulli"])
def test_output_fisher_is_expected_outer_product_of_residuals(name):
    """Λ = E_y[r rᵀ] by enumeration of every label (C classes, or the 2^C bit vectors)."""
    lik = LIKS[name]
    f, _ = data(name, (3, 4))
    for n in range(3):
        fn = f[n : n + 1]
        ys = ([torch.tensor([c]) for c in range(4)] if name == "categorical"
              else [torch.tensor([bits], dtype=torch.float64) for bits in itertools.product([0.0, 1.0], repeat=4)])
        E = torch.zeros(4, 4, dtype=torch.float64)
        for yy in ys:
            p = torch.exp(-nll_reference(name, fn, yy))[0]
            r = lik.residual(fn, yy)[0]
            E += p * torch.outer(r, r)
        assert torch.allclose(lik.output_fisher(fn)[0], E, rtol=1e-12, atol=1e-15)


def test_bernoulli_integer_targets():
    """0/1 targets as integers or booleans give the same nll as float targets (they are cast to f's dtype)."""
    f, y = data("bernoulli", (4, 3))
    ref = nll_reference("bernoulli", f, y)
    for yy in (y.long(), y.int()):
        assert torch.allclose(Bernoulli().nll(f, yy), ref, rtol=1e-13, atol=0)
        assert torch.allclose(Bernoulli().residual(f, yy), torch.sigmoid(f) - y, rtol=1e-13, atol=0)


@pytest.mark.parametrize("name", ["gaussian", "bernoulli"])
def test_target_shape_errors_name_the_batch(name):
    from fisherkit.errors import ShapeError

    f, y = data(name, (4, 3))
    with pytest.raises(ShapeError, match=r"targets of shape \(4, 2\) do not fit outputs of shape \(4, 3\) in batch 7$"):
        LIKS[name].check(f, y[:, :2], batch=7)
    with pytest.raises(ShapeError, match=r"outputs of shape \(4, 3\)$"):
        LIKS[name].check(f, y[:, :2])


def test_configs_round_trip_and_repr():
    for lik in LIKS.values():
        back = get_likelihood(lik.to_config())
        assert type(back) is type(lik) and back.to_config() == lik.to_config()
    assert get_likelihood({"name": "gaussian", "sigma": SIGMA}).sigma == SIGMA
    assert repr(Gaussian(SIGMA)) == f"Gaussian(sigma={SIGMA})" and repr(Categorical()) == "Categorical()"
    f = torch.zeros(2, 3, dtype=torch.float64)
    assert torch.allclose(Gaussian(SIGMA).sqrt_fisher(f)[0], torch.eye(3, dtype=torch.float64) / SIGMA)
