"""Operations on every structure against the dense matrix each one represents (torch.linalg in float64)."""

import pytest
import torch

import fisherkit as fk
from models import labels, make

STRUCTURES = ["dense", "diag", "block", "kfac", "ekfac", "lowrank", "implicit"]


@pytest.fixture(scope="module")
def fishers():
    m, X = make("cnn")
    y = labels(m, X, "categorical")
    out = {}
    for s in STRUCTURES:  # implicit: one batch, each product is a pass over the data
        out[s] = fk.fisher(m, (X, y), structure=s, rank=6, batch_size=None if s == "implicit" else 2)
    return m, X, y, out


def close(a, b, tol=1e-9):
    return float((a - b).abs().max()) <= tol * max(1.0, float(b.abs().max()))


@pytest.mark.parametrize("s", STRUCTURES)
def test_operations_agree_with_dense_representation(fishers, s):
    _, _, _, F = fishers
    F = F[s]
    M = F.to_dense()
    P = M.shape[0]
    assert torch.allclose(M, M.T, atol=1e-12)
    v = torch.randn(P, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert close(F.mv(v), M @ v)
    assert close(F @ v, M @ v)
    assert close(F.quadratic_form(v), v @ M @ v)
    damping = 1e-2
    x = F.solve(v, damping)
    assert close(M @ x + damping * x, v, 1e-7)
    if s != "implicit":  # implicit inherits these from to_dense (tested above); each costs P passes
        assert close(F.diag(), M.diagonal())
        assert close(F.trace(), M.trace())
        assert close(F.frobenius_norm(), M.norm())
        assert close(F.logdet(damping), torch.logdet(M + damping * torch.eye(P, dtype=torch.float64)), 1e-8)
    vals, vecs = F.eig(3)
    ref = torch.linalg.eigvalsh(M).flip(0)[:3]
    assert close(vals, ref, 1e-8)
    assert close(M @ vecs, vecs * vals, 1e-7)
    parts = F.unflatten(v)
    assert list(parts) == F.info.names and torch.equal(F.flatten(parts), v)


@pytest.mark.parametrize("s", STRUCTURES)
def test_sum_and_scaling(fishers, s):
    m, X, y, F = fishers
    G = fk.fisher(m, (X[:3], y[:3]), structure=s, rank=6, batch_size=None if s == "implicit" else 2)
    A, B = F[s], G
    if s == "ekfac":  # different eigenbases: the sum is kept term-wise, still exact as an operator
        pass
    S = A + 0.5 * B
    if s == "implicit":
        v = torch.randn(A.info.size, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        assert close(S.mv(v), A.mv(v) + 0.5 * B.mv(v), 1e-9)
    else:
        assert close(S.to_dense(), A.to_dense() + 0.5 * B.to_dense(), 1e-9)
    assert S.num_samples == A.num_samples + B.num_samples
    with pytest.raises(fk.FisherkitError):
        _ = A + fk.fisher(m, (X, y), structure="diag" if s != "diag" else "dense")


def test_kfac_solve_never_forms_dense(fishers, monkeypatch):
    _, _, _, F = fishers
    K = F["kfac"]
    monkeypatch.setattr(torch, "kron", lambda *a: (_ for _ in ()).throw(AssertionError("dense kron formed")))
    v = torch.ones(K.info.size, dtype=torch.float64)
    K.solve(v, 1e-3)
    K.mv(v)
    K.logdet(1e-3)


def test_singular_without_damping_is_refused(fishers):
    _, _, _, F = fishers
    v = torch.ones(F["dense"].info.size, dtype=torch.float64)
    for s in ("dense", "block", "kfac", "lowrank", "implicit"):
        with pytest.raises(fk.FisherkitError, match="damping"):
            F[s].solve(v, 0.0)
    with pytest.raises(fk.FisherkitError, match="damping"):
        F["diag"].solve(v, -1.0)


def test_eigh_float64_fallback(monkeypatch):
    from fisherkit.curvature import linalg

    calls = {"n": 0}
    real = torch.linalg.eigh

    def flaky(m):
        calls["n"] += 1
        if m.dtype == torch.float32:
            raise RuntimeError("linalg.eigh: The algorithm failed to converge")
        return real(m)

    monkeypatch.setattr(torch.linalg, "eigh", flaky)
    a = torch.randn(5, 5)
    m = a @ a.T
    vals, vecs = linalg.safe_eigh(m)
    assert vals.dtype == torch.float32 and calls["n"] == 2
    assert torch.allclose(vecs @ torch.diag(vals) @ vecs.T, m, atol=1e-4)
