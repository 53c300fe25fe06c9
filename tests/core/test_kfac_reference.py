"""KFAC-expand and EKFAC against hand-written float64 references (tests/reference.py).

References: ``brute_kfac`` builds A = (1/N) Σₙ (1/T) Σ_t ã ãᵀ from unfolded inputs (F.unfold / strided
slices) and G = (1/N) Σₙ Σ_t Jₜᵀ Λ Jₜ from per-sample autograd Jacobians of the outputs w.r.t. each
layer's pre-activation; ``brute_fisher`` gives the exact per-layer Fisher block; EKFAC's scaling must
equal diag(Qᵀ F_block Q) in the Kronecker eigenbasis Q = Q_G ⊗ Q_A. Tolerance 1e-10 (float64 round-off).
"""

import warnings

import pytest
import torch
from torch import nn

import fisherkit as fk
from models import labels, make
from reference import brute_fisher, brute_kfac, ekfac_dense, kfac_dense, layer_index

TOL = 1e-10


def rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


class SeqPool(nn.Module):
    """A Linear applied to [B, T, d] sequences (T = 5 shared positions), pooled, then a Linear head."""

    def __init__(self, d=3, h=4, out=3):
        super().__init__()
        self.inner = nn.Linear(d, h)
        self.head = nn.Linear(h, out)

    def forward(self, x):
        return self.head(torch.tanh(self.inner(x)).mean(1))


class SeqTokens(nn.Module):
    """Per-token outputs [B, T, C] from Linears on [B, T, d] (several output positions per sample)."""

    def __init__(self, d=3, h=4, out=3):
        super().__init__()
        self.inner = nn.Linear(d, h, bias=False)
        self.head = nn.Linear(h, out)

    def forward(self, x):
        return self.head(torch.tanh(self.inner(x)))


def build(name):
    if name in ("cnn", "conv1d", "mlp"):
        return make(name)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    m = (SeqPool() if name == "seq_pool" else SeqTokens()).double().eval()
    return m, torch.randn(6, 5, 3, generator=g, dtype=torch.float64)


def layers(m):
    return {n: mod for n, mod in m.named_modules() if isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d))}


CASES = [("cnn", "categorical"), ("conv1d", "categorical"), ("seq_pool", "categorical"), ("seq_tokens", "categorical"),
         ("cnn", "bernoulli"), ("seq_tokens", "gaussian")]


@pytest.fixture(scope="module")
def refs():
    out = {}
    for name, lik in CASES:
        m, X = build(name)
        out[name, lik] = (m, X, brute_kfac(m, X, layers(m), lik), brute_fisher(m, X, None, lik, "exact"))
    return out


@pytest.mark.parametrize("name,lik", CASES)
def test_kfac_expand_factors_match_brute_force(refs, name, lik):
    m, X, ref, _ = refs[name, lik]
    K = fk.fisher(m, (X, None), likelihood=lik, structure="kfac", batch_size=4)
    got = K.factors()
    assert set(got) == {k + ".weight" for k in ref}
    for k, (A, G) in ref.items():
        gA, gG = got[k + ".weight"]
        assert rel(gA, A) < TOL, f"A of {k}"
        assert rel(gG, G) < TOL, f"G of {k}"
    # as a P × P operator: block-diagonal G ⊗ A at each layer's positions
    assert rel(K.to_dense(), kfac_dense(m, ref)) < TOL


@pytest.mark.parametrize("name,lik", CASES)
def test_ekfac_scaling_is_diag_of_block_fisher_in_kfac_eigenbasis(refs, name, lik):
    m, X, ref, F = refs[name, lik]
    E = fk.fisher(m, (X, None), likelihood=lik, structure="ekfac", batch_size=4)
    blocks = {b.names[0]: b for b in E.blocks if b.kind == "ekron"}
    assert set(blocks) == {k + ".weight" for k in ref}
    for k, (A, G) in ref.items():
        b = blocks[k + ".weight"]
        # the basis is the KFAC eigenbasis: Q_Aᵀ A Q_A and Q_Gᵀ G Q_G are diagonal (brute-force A, G)
        for Q, M in ((b.QA, A), (b.QG, G)):
            R = Q.T @ M @ Q
            assert float((R - torch.diag(R.diagonal())).abs().max()) < 1e-10 * float(M.abs().max())
        idx = layer_index(m, k)
        Q = torch.kron(b.QG, b.QA)
        S_ref = (Q.T @ F[idx[:, None], idx[None, :]] @ Q).diagonal().reshape(b.S.shape)
        assert rel(b.S, S_ref) < TOL
    # the whole operator against EKFAC built from its definition with the brute-force factors and Fisher
    assert rel(E.to_dense(), ekfac_dense(m, ref, F)) < 1e-9


def test_dropped_one_over_t_would_be_seen(refs):
    """Sensitivity of the reference: without the 1/T in A (T = 5 positions) the factors differ by 5×."""
    m, X, ref, _ = refs["seq_pool", "categorical"]
    A, _ = ref["inner"]
    a = torch.cat([X, X.new_ones(*X.shape[:2], 1)], -1).reshape(-1, 4)
    assert rel(A, a.T @ a / X.shape[0] / 5) < TOL  # closed form for a first layer: inputs are the data
    assert rel(A * 5, A) > 1


def conv_variant(name):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if name == "conv2d_dilation_padding":
        m, X = nn.Sequential(nn.Conv2d(1, 2, 3, dilation=2, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(18, 3)), (5, 1, 5, 5)
    elif name == "conv1d_stride_padding":
        m, X = nn.Sequential(nn.Conv1d(2, 3, 3, stride=2, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(12, 3)), (5, 2, 8)
    elif name == "conv1d_dilation_no_bias":
        m, X = nn.Sequential(nn.Conv1d(2, 3, 3, dilation=2, bias=False), nn.Tanh(), nn.Flatten(), nn.Linear(12, 3)), (5, 2, 8)
    else:
        m, X = nn.Sequential(nn.Conv2d(2, 3, 2, stride=2, bias=False), nn.Tanh(), nn.Flatten(), nn.Linear(12, 3)), (5, 2, 4, 4)
    return m.double().eval(), torch.randn(*X, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("name", ["conv2d_dilation_padding", "conv1d_stride_padding", "conv1d_dilation_no_bias",
                                  "conv2d_stride_no_bias"])
def test_kfac_conv_geometry_matches_brute_force(name):
    """Stride, padding, dilation and bias-free convolutions: the unfolded patches of the reference."""
    m, X = conv_variant(name)
    ref = brute_kfac(m, X, {"0": m[0], "3": m[3]})
    got = fk.fisher(m, (X, None), structure="kfac", batch_size=2).factors()
    for k, (A, G) in ref.items():
        assert rel(got[k + ".weight"][0], A) < TOL and rel(got[k + ".weight"][1], G) < TOL
