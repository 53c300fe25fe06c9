"""Fast paths of the accumulation against the float64 brute force (tests/reference.py), and that they
are taken: Linear-only dense Fishers never form per-sample gradients (``gram_add_kron_``), bias-free
layers (their own index maps), layers shared over T = 2 positions, and a model whose only layer is a
convolution shared over positions (no Linear layer to send it down the general path)."""

import pytest
import torch
from torch import nn

import fisherkit as fk
from fisherkit.engine import accumulate
from reference import brute_fisher

TOL = 1e-10


def rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


class ConvOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 3, 3)

    def forward(self, x):
        return torch.tanh(self.conv(x)).mean(-1)


class SeqSum(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(3, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):  # x: [B, T = 2, 3]
        return self.head(torch.tanh(self.inner(x)).sum(1))


def build(name):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if name == "mlp":
        m, X = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)), torch.randn(7, 4, generator=g)
    elif name == "mlp_no_bias":
        m, X = nn.Sequential(nn.Linear(4, 5, bias=False), nn.Tanh(), nn.Linear(5, 3, bias=False)), torch.randn(7, 4, generator=g)
    elif name == "conv_no_bias":
        m = nn.Sequential(nn.Conv2d(1, 2, 2, bias=False), nn.Tanh(), nn.Flatten(), nn.Linear(8, 3, bias=False))
        X = torch.randn(5, 1, 3, 3, generator=g)
    elif name == "conv_only":
        m, X = ConvOnly(), torch.randn(6, 2, 6, generator=g)
    else:
        m, X = SeqSum(), torch.randn(6, 2, 3, generator=g)
    return m.double().eval(), X.double()


@pytest.mark.parametrize("name", ["mlp", "mlp_no_bias"])
def test_linear_only_dense_skips_per_sample_gradients(name, monkeypatch):
    m, X = build(name)
    F = brute_fisher(m, X, None, "categorical", "exact")

    def refuse(*a, **k):
        raise AssertionError("per-sample gradients formed for a Linear-only model")

    monkeypatch.setattr(accumulate, "persample_flat", refuse)
    D = fk.fisher(m, (X, None), structure="dense", batch_size=3)
    assert rel(D.to_dense(), F) < TOL


@pytest.mark.parametrize("name", ["mlp_no_bias", "conv_no_bias", "conv_only", "seq_sum"])
@pytest.mark.parametrize("structure", ["dense", "diag", "block"])
def test_structures_match_brute_force(name, structure):
    m, X = build(name)
    F = brute_fisher(m, X, None, "categorical", "exact")
    C = fk.fisher(m, (X, None), structure=structure, batch_size=4)
    if structure == "diag":
        assert rel(C.diag(), F.diagonal()) < TOL
    else:
        D = C.to_dense()
        ref = F if structure == "dense" else F * (D != 0)
        assert rel(D, ref) < TOL and rel(D.diagonal(), F.diagonal()) < TOL


def test_linear_only_dense_in_sample_chunks(monkeypatch):
    """gram_add_kron_ splits a batch into chunks of samples when the [B, I·I'] products get large; with
    its chunk size patched down to 64 bytes every sample is its own chunk: the sum must not change."""
    m, X = build("mlp")
    F = brute_fisher(m, X, None, "categorical", "exact")
    monkeypatch.setattr(accumulate.gram_add_kron_, "__defaults__", (64.0,))
    assert rel(fk.fisher(m, (X, None), structure="dense", batch_size=4).to_dense(), F) < TOL
