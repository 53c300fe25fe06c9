"""Operations on every structure against an independent float64 reference matrix of that structure.

References (tests/reference.py, none built from fisherkit's own matrices): dense and implicit — the
brute-force Fisher F (per-sample Jacobians); diag — diag(F); block — F restricted to each layer's
block; kfac — G ⊗ A per layer from ``brute_kfac`` (unfolded inputs, autograd Jacobians); ekfac —
Q diag(diag(Qᵀ F_block Q)) Qᵀ with Q the eigenvectors of those factors; lowrank — the top-6
eigenpairs of F (torch.linalg.eigh). Every operation (mv, solve, diag, trace, Frobenius norm,
logdet, eig, sums and scalings) is compared with torch.linalg on that reference, to 1e-9.
"""

import pytest
import torch
from torch import nn

import fisherkit as fk
from models import labels, make
from reference import brute_fisher, brute_kfac, ekfac_dense, kfac_dense, layer_index

STRUCTURES = ["dense", "diag", "block", "kfac", "ekfac", "lowrank", "implicit"]
RANK = 6


def references(m, X):
    """structure → the reference P × P matrix (float64)."""
    mods = {n: mod for n, mod in m.named_modules() if isinstance(mod, (nn.Linear, nn.Conv2d))}
    F = brute_fisher(m, X, None, "categorical", "exact")
    factors = brute_kfac(m, X, mods)
    mask = torch.zeros_like(F, dtype=torch.bool)
    for k in mods:
        idx = layer_index(m, k)
        mask[idx[:, None], idx[None, :]] = True
    vals, vecs = torch.linalg.eigh(F)
    top, U = vals.flip(0)[:RANK], vecs.flip(1)[:, :RANK]
    return {"dense": F, "implicit": F, "diag": torch.diag(F.diagonal()), "block": F * mask,
            "kfac": kfac_dense(m, factors), "ekfac": ekfac_dense(m, factors, F), "lowrank": (U * top) @ U.T}


@pytest.fixture(scope="module")
def fishers():
    m, X = make("cnn")
    y = labels(m, X, "categorical")
    out = {}
    for s in STRUCTURES:  # implicit: one batch, each product is a pass over the data
        out[s] = fk.fisher(m, (X, y), structure=s, rank=RANK, batch_size=None if s == "implicit" else 2)
    return m, X, y, out, references(m, X)


def close(a, b, tol=1e-9):
    return float((a - b).abs().max()) <= tol * max(1.0, float(b.abs().max()))


@pytest.mark.parametrize("s", STRUCTURES)
def test_operations_agree_with_independent_reference(fishers, s):
    _, _, _, Fs, refs = fishers
    F, M = Fs[s], refs[s]
    P = M.shape[0]
    eye = torch.eye(P, dtype=torch.float64)
    v = torch.randn(P, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert close(F.mv(v), M @ v)
    assert close(F @ v, M @ v)
    assert close(F.quadratic_form(v), v @ M @ v)
    damping = 1e-2
    assert close(F.solve(v, damping), torch.linalg.solve(M + damping * eye, v), 1e-7)
    # implicit too: its to_dense/diag/trace/logdet are the base class's defaults, through P products
    assert close(F.to_dense(), M)
    assert close(F.diag(), M.diagonal())
    assert close(F.trace(), M.trace())
    assert close(F.frobenius_norm(), M.norm())
    assert close(F.logdet(damping), torch.logdet(M + damping * eye), 1e-8)
    vals, vecs = F.eig(3)
    assert close(vals, torch.linalg.eigvalsh(M).flip(0)[:3], 1e-8)
    assert close(M @ vecs, vecs * vals, 1e-7)
    parts = F.unflatten(v)
    assert list(parts) == F.info.names and torch.equal(F.flatten(parts), v)


@pytest.mark.parametrize("s", STRUCTURES)
def test_sum_and_scaling(fishers, s):
    m, X, y, Fs, refs = fishers
    G = fk.fisher(m, (X[:3], y[:3]), structure=s, rank=RANK, batch_size=None if s == "implicit" else 2)
    ref = refs[s] + 0.5 * references(m, X[:3])[s]  # ekfac: two eigenbases, kept term-wise; lowrank: rank 12
    S = Fs[s] + 0.5 * G
    v = torch.randn(ref.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert close(S.mv(v), ref @ v)
    if s != "implicit":
        assert close(S.to_dense(), ref)
        assert close(S.diag(), ref.diagonal())
        assert close(S.trace(), ref.trace())
    assert S.num_samples == Fs[s].num_samples + G.num_samples == X.shape[0] + 3
    with pytest.raises(fk.FisherkitError):
        _ = Fs[s] + fk.fisher(m, (X, y), structure="diag" if s != "diag" else "dense")


def test_kfac_solve_never_forms_dense(fishers, monkeypatch):
    _, _, _, F, _ = fishers
    K = F["kfac"]
    monkeypatch.setattr(torch, "kron", lambda *a: (_ for _ in ()).throw(AssertionError("dense kron formed")))
    v = torch.ones(K.info.size, dtype=torch.float64)
    K.solve(v, 1e-3)
    K.mv(v)
    K.logdet(1e-3)


def test_singular_without_damping_is_refused(fishers):
    _, _, _, F, _ = fishers
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
