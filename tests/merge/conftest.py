"""Small float64 models for the merge tests (one place that builds them)."""

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def mlp(seed, d=4, h=5, out=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, out)).double()


def data(seed, n=40, d=4, out=3):
    g = torch.Generator().manual_seed(100 + seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    return X, torch.randint(0, out, (n,), generator=g)


def flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def fine_tunes(k=2, scale=0.3):
    """k models near one start (a shared seed), each moved by its own seeded perturbation."""
    start = mlp(0)
    out = []
    for i in range(k):
        m = mlp(0)
        g = torch.Generator().manual_seed(7 + i)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
        out.append(m)
    return start, out
