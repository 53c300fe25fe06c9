"""Independent brute-force references in float64: per-sample Jacobians with torch.func.jacrev.

F_exact = 1/N Σₙ Jₙᵀ Λₙ Jₙ,  F_emp = 1/N Σₙ gₙ gₙᵀ,  H = ∇² of the nll, all on the flat vector of
``requires_grad`` parameters in ``named_parameters`` order. Nothing here uses fisherkit's engine.
"""

from __future__ import annotations

import torch
from torch.func import functional_call, hessian, jacrev


def flat_params(model):
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    theta = torch.cat([dict(model.named_parameters())[n].detach().reshape(-1) for n in names])
    return names, theta


def _unflat(model, names, theta):
    params = dict(model.named_parameters())
    out, i = {}, 0
    for n in names:
        k = params[n].numel()
        out[n] = theta[i : i + k].reshape(params[n].shape)
        i += k
    full = {n: p.detach() for n, p in params.items()}
    full.update(out)
    return full


def output_fn(model, names, x):
    buffers = dict(model.named_buffers())
    return lambda theta: functional_call(model, (_unflat(model, names, theta), buffers), (x,))


def output_fisher(likelihood: str, f: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Λ per output position [*E, C, C], written from the textbook formulas."""
    if likelihood == "categorical":
        p = torch.softmax(f, -1)
        return torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)
    if likelihood == "gaussian":
        return torch.eye(f.shape[-1], dtype=f.dtype).expand(*f.shape, f.shape[-1]) / sigma**2
    if likelihood == "bernoulli":
        p = torch.sigmoid(f)
        return torch.diag_embed(p * (1 - p))
    raise ValueError(likelihood)


def nll(likelihood: str, f, y, sigma=1.0):
    if likelihood == "categorical":
        return -torch.log_softmax(f, -1).gather(-1, y.unsqueeze(-1)).sum()
    if likelihood == "gaussian":
        return 0.5 * ((f - y) ** 2).sum() / sigma**2
    if likelihood == "bernoulli":
        return torch.nn.functional.binary_cross_entropy_with_logits(f, y, reduction="sum")
    raise ValueError(likelihood)


def brute_fisher(model, X, y=None, likelihood="categorical", kind="exact", sigma=1.0):
    """Dense P × P Fisher by per-sample Jacobians (one sample at a time)."""
    names, theta = flat_params(model)
    F = torch.zeros(theta.numel(), theta.numel(), dtype=theta.dtype)
    for n in range(X.shape[0]):
        f_of = output_fn(model, names, X[n : n + 1])
        if kind == "exact":
            J = jacrev(f_of)(theta)  # [1, *E, C, P]
            f = f_of(theta)
            lam = output_fisher(likelihood, f[0], sigma)  # [*E, C, C]
            c = f.shape[-1]
            Jf = J.reshape(-1, c, theta.numel())
            lam = lam.reshape(-1, c, c)
            F += torch.einsum("eap,eab,ebq->pq", Jf, lam, Jf)
        else:
            g = torch.func.grad(lambda t: nll(likelihood, f_of(t), y[n : n + 1], sigma))(theta)
            F += torch.outer(g, g)
    return F / X.shape[0]


def brute_expected_hessian(model, X, likelihood="categorical", n_samples=None, generator=None):
    """−E_y[∇² log p] = E_y[∇² nll] averaged over data, by exact enumeration over classes (categorical)."""
    names, theta = flat_params(model)
    H = torch.zeros(theta.numel(), theta.numel(), dtype=theta.dtype)
    for n in range(X.shape[0]):
        f_of = output_fn(model, names, X[n : n + 1])
        p = torch.softmax(f_of(theta), -1)[0]
        for c in range(p.shape[-1]):
            yc = torch.tensor([c])
            H += p[c] * hessian(lambda t: nll("categorical", f_of(t), yc))(theta)
    return H / X.shape[0]
