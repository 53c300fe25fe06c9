"""Property-based checks on random small MLPs (hypothesis), and float32 against the float64 reference.

For random layer widths, sample counts, batch sizes and likelihoods:
* every structure's ``diag()`` equals the diagonal of its ``to_dense()``, and ``solve`` inverts
  ``mv + damping`` (x = (F + δI)⁻¹ v ⇒ F x + δ x = v);
* the exact diagonal (diag, block, dense) equals the brute-force float64 Fisher's diagonal
  (tests/reference.py), and KFAC's trace equals tr G · tr A of the brute-force factors.
The same models in float32 must match the float64 brute force to a relative 2e-5 (float32 unit
round-off is 6e-8; the sums here have ≤ 60 terms of mixed sign, and the solve's conditioning is
kept below 1e3 by the damping).
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import fisherkit as fk
from fisherkit.likelihoods import Gaussian
from reference import brute_fisher, brute_kfac

STRUCTURES = ["dense", "diag", "block", "kfac", "ekfac"]


def mlp(d_in, hidden, out, seed, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, out)).to(dtype).eval()


def likelihood(name):
    return Gaussian(sigma=0.7) if name == "gaussian" else name


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(d_in=st.integers(1, 4), hidden=st.integers(1, 5), out=st.integers(2, 4), n=st.integers(1, 7),
       batch=st.integers(1, 4), lik=st.sampled_from(["categorical", "gaussian", "bernoulli"]),
       seed=st.integers(0, 2**16))
def test_random_mlps_structures_are_consistent_and_exact(d_in, hidden, out, n, batch, lik, seed):
    m = mlp(d_in, hidden, out, seed)
    X = torch.randn(n, d_in, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    F = brute_fisher(m, X, None, lik, "exact", sigma=0.7)
    scale = float(F.diagonal().max()) + 1e-300
    v = torch.randn(F.shape[0], generator=torch.Generator().manual_seed(seed + 2), dtype=torch.float64)
    damping = 0.1 * scale + 1e-6
    for s in STRUCTURES:
        C = fk.fisher(m, (X, None), likelihood=likelihood(lik), structure=s, batch_size=batch)
        D = C.to_dense()
        assert torch.allclose(C.diag(), D.diagonal(), rtol=1e-10, atol=1e-12 * scale), s
        x = C.solve(v, damping)
        assert torch.allclose(C.mv(x) + damping * x, v, rtol=1e-8, atol=1e-9 * float(v.abs().max())), s
        if s in ("dense", "diag", "block"):
            assert torch.allclose(C.diag(), F.diagonal(), rtol=1e-9, atol=1e-12 * scale), s
    K = fk.fisher(m, (X, None), likelihood=likelihood(lik), structure="kfac", batch_size=batch)
    ref = brute_kfac(m, X, {"0": m[0], "2": m[2]}, lik, sigma=0.7)
    assert torch.allclose(K.trace(), sum(A.trace() * G.trace() for A, G in ref.values()), rtol=1e-9)


@pytest.mark.parametrize("lik", ["categorical", "gaussian", "bernoulli"])
def test_float32_matches_float64_reference(lik):
    m64 = mlp(4, 6, 3, seed=3)
    m32 = mlp(4, 6, 3, seed=3, dtype=torch.float32)
    X = torch.randn(20, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    F = brute_fisher(m64, X, None, lik, "exact", sigma=0.7)
    v = torch.randn(F.shape[0], generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    damping = 0.1 * float(F.diagonal().max())
    for s in ("dense", "diag", "block", "kfac"):
        C = fk.fisher(m32, (X.float(), None), likelihood=likelihood(lik), structure=s, batch_size=8)
        assert C.diag().dtype == torch.float32
        ref = {"dense": F, "diag": torch.diag(F.diagonal())}.get(s)
        if s == "block":
            ref = torch.block_diag(F[:30, :30], F[30:, 30:])
        if s == "kfac":
            from reference import kfac_dense

            ref = kfac_dense(m64, brute_kfac(m64, X, {"0": m64[0], "2": m64[2]}, lik, sigma=0.7))
        got = C.to_dense().double()
        assert float((got - ref).norm() / ref.norm()) < 2e-5, s
        sol = C.solve(v.float(), damping).double()
        want = torch.linalg.solve(ref + damping * torch.eye(ref.shape[0], dtype=torch.float64), v)
        assert float((sol - want).norm() / want.norm()) < 2e-5, s
