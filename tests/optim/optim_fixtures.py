"""Small seeded models and data for the optimizer tests (float64 where closed forms are compared)."""

from __future__ import annotations

import torch
from torch import nn


def linear_gaussian(n=24, d_in=3, d_out=2, sigma=0.5, seed=0):
    """A linear model y = W x + b + σ ε and its data; float64."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    Y = torch.randn(n, d_out, generator=g, dtype=torch.float64)
    torch.manual_seed(seed)
    model = nn.Linear(d_in, d_out).double()
    return model, X, Y, sigma


def closed_form_fisher(X: torch.Tensor, d_out: int, sigma: float) -> torch.Tensor:
    """F of the linear-Gaussian model in named_parameters order (weight row-major, then bias).

    With x̃ = [x, 1] and M = [W | b], F = (I/σ²) ⊗ (X̃ᵀX̃/N) in the row-major vec(M) order.
    """
    n, d_in = X.shape
    Xt = torch.cat([X, X.new_ones(n, 1)], 1)
    big = torch.kron(torch.eye(d_out, dtype=X.dtype) / sigma**2, Xt.T @ Xt / n)
    grid = torch.arange(d_out * (d_in + 1)).reshape(d_out, d_in + 1)
    perm = torch.cat([grid[:, :-1].reshape(-1), grid[:, -1]])
    return big[perm][:, perm]


def gaussian_loss(model, X, Y, sigma):
    """Mean over samples of ½‖y − f‖²/σ² (the Gaussian nll without its constant)."""
    return 0.5 * ((Y - model(X)) ** 2).sum(-1).mean() / sigma**2


def flat_params(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def flat_grads(model) -> torch.Tensor:
    return torch.cat([p.grad.detach().reshape(-1) for p in model.parameters()])


def mlp(d_in=8, hidden=12, d_out=4, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, d_out)).to(dtype)


def classification_data(n=64, d_in=8, n_classes=4, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d_in, generator=g, dtype=dtype)
    w = torch.randn(d_in, n_classes, generator=g, dtype=dtype)
    y = (X @ w + 0.5 * torch.randn(n, n_classes, generator=g, dtype=dtype)).argmax(1)
    return X, y
