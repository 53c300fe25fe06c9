"""Small float64 models and data for the Laplace tests, plus brute-force references (torch.func)."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, jacrev


def mlp(seed=0, d=4, h=5, c=3, n=30):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    m = nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, c)).double().eval()
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=g)
    return m, X, y


def cnn(seed=0, n=12):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    m = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 3 * 3, 3))
    m = m.double().eval()
    X = torch.randn(n, 1, 6, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    return m, X, y


def brute_jacobian(model, names, X):
    """J [B, C, P] of the outputs w.r.t. the flat parameters ``names``, one sample at a time."""
    params = dict(model.named_parameters())
    theta = torch.cat([params[n].detach().reshape(-1) for n in names])
    numels = [params[n].numel() for n in names]

    def f(t, x):
        parts = dict(zip(names, [p.reshape(params[n].shape) for n, p in zip(names, torch.split(t, numels))]))
        return functional_call(model, parts, (x[None],), strict=False)[0]

    return torch.stack([jacrev(f)(theta, x) for x in X])


def brute_ggn(model, names, X, likelihood="categorical"):
    """Σₙ Jₙᵀ Λₙ Jₙ (the GGN of the whole data set) by per-sample Jacobians."""
    J = brute_jacobian(model, names, X)
    with torch.no_grad():
        f = model(X)
    if likelihood == "categorical":
        p = torch.softmax(f, -1)
        lam = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    elif likelihood == "bernoulli":
        p = torch.sigmoid(f)
        lam = torch.diag_embed(p * (1 - p))
    else:
        lam = torch.eye(f.shape[1], dtype=f.dtype).expand(f.shape[0], -1, -1)
    return torch.einsum("bcp,bcd,bdq->pq", J, lam, J)
