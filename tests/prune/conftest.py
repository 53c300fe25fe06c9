"""Small float64 models for the pruning tests (one place that builds them)."""

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def mlp(seed=0, d=6, h=8, out=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, out)).double()


def data(seed=1, n=60, d=6, out=3):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    return X, torch.randint(0, out, (n,), generator=g)


def spd(m, seed=0):
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(m, m + 3, generator=g, dtype=torch.float64)
    return B @ B.T / m + 0.1 * torch.eye(m, dtype=torch.float64)


def kkt(H, w, Q):
    """Brute force: min ½δᵀHδ s.t. δ_Q = −w_Q, by solving the KKT system [[H, E],[Eᵀ, 0]]."""
    m, k = len(w), len(Q)
    E = torch.zeros(m, k, dtype=torch.float64)
    E[torch.as_tensor(Q), torch.arange(k)] = 1
    K = torch.zeros(m + k, m + k, dtype=torch.float64)
    K[:m, :m], K[:m, m:], K[m:, :m] = H, E, E.T
    rhs = torch.cat([torch.zeros(m, dtype=torch.float64), -w[torch.as_tensor(Q)]])
    delta = torch.linalg.solve(K, rhs)[:m]
    return delta, 0.5 * delta @ H @ delta
