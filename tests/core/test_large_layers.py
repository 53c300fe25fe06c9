"""Code paths that only large layers take, against float64 brute force (tests/reference.py).

* the blocked symmetric Gram (``engine.accumulate.gram_add_`` / ``symmetrize``) for factors ≥ 1.5·SYM_BLOCK
  wide: on a real 400-input Linear, and with ``SYM_BLOCK`` patched down on conv / sequence models;
* the plain wide-factor path (> ``SYM_MAX``), with ``SYM_MAX`` patched down;
* the diagonal fallback of blocks over ``DENSE_BLOCK_LIMIT`` parameters (patched down in
  ``curvature.block``, which imports it by name);
* Lanczos low-rank for models too large for the dense Gram (small ``max_memory``, or
  ``curvature.dense.DENSE_LIMIT`` patched down — ``dense_fits`` reads it there).
References: ``brute_kfac`` (autograd Jacobians, unfolded inputs), ``brute_fisher`` (per-sample
Jacobians), closed forms (A of a first layer = X̃ᵀX̃/N) and ``torch.linalg.eigh`` in float64.
"""

import warnings

import pytest
import torch
from torch import nn

import fisherkit as fk
from fisherkit.engine import accumulate
from models import make
from reference import brute_fisher, brute_kfac, ekfac_dense, kfac_dense, layer_index

TOL = 1e-10


def rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def layers(m):
    return {n: mod for n, mod in m.named_modules() if isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d))}


# ---- the symmetric Gram accumulation itself ----------------------------------------------------------


@pytest.mark.parametrize("n", [300, 400, 600, 1000])
def test_gram_add_and_symmetrize_match_xtx(n):
    """Σ α xᵀx over two chunks, upper block triangle then mirrored, equals the float64 product."""
    g = torch.Generator().manual_seed(n)
    x1 = torch.randn(40, n, generator=g, dtype=torch.float64)
    x2 = torch.randn(25, n, generator=g, dtype=torch.float64)
    sums = {}
    accumulate.gram_add_(sums, "k", x1)
    accumulate.gram_add_(sums, "k", x2, alpha=0.25)
    blocked = len(accumulate._block_bounds(n)) > 2
    assert blocked == (n >= 1.5 * accumulate.SYM_BLOCK)  # 384 and up take the blocked path
    if blocked:  # the strictly lower blocks are left for symmetrize: the raw sum is not symmetric
        assert not torch.equal(sums["k"], sums["k"].T)
    ref = torch.einsum("mi,mj->ij", x1, x1) + 0.25 * torch.einsum("mi,mj->ij", x2, x2)
    assert rel(accumulate.symmetrize(sums["k"]), ref) < 1e-13


def test_wide_factor_plain_path(monkeypatch):
    """Above SYM_MAX one plain matmul fills the whole matrix (no mirroring needed)."""
    monkeypatch.setattr(accumulate, "SYM_MAX", 500)
    x = torch.randn(30, 600, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sums = {}
    accumulate.gram_add_(sums, "k", x)
    assert torch.equal(sums["k"], sums["k"].T)
    assert rel(accumulate.symmetrize(sums["k"]), x.T @ x) < 1e-13


# ---- through fk.fisher and the optimizer on a real 400-input layer ------------------------------------


@pytest.fixture(scope="module")
def wide():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(400, 3), nn.Tanh(), nn.Linear(3, 3)).double().eval()
    X = torch.randn(10, 400, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return m, X, brute_kfac(m, X, {"0": m[0], "2": m[2]})


def test_kfac_400_input_layer(wide):
    m, X, ref = wide
    Xt = torch.cat([X, X.new_ones(10, 1)], 1)
    assert rel(ref["0"][0], Xt.T @ Xt / 10) < 1e-14  # the reference's A is the closed form here
    K = fk.fisher(m, (X, None), structure="kfac", batch_size=4)
    for k, (A, G) in ref.items():
        gA, gG = K.factors()[k + ".weight"]
        assert rel(gA, A) < TOL and rel(gG, G) < TOL


def test_ekfac_400_input_layer(wide):
    m, X, ref = wide
    F = brute_fisher(m, X, None, "categorical", "exact")
    E = fk.fisher(m, (X, None), structure="ekfac", batch_size=4)
    # EKFAC's defining property on the 1203-parameter layer: S = diag(Qᵀ F_block Q); its trace is exact
    idx = layer_index(m, "0")
    Fl = F[idx[:, None], idx[None, :]]
    b = next(b for b in E.blocks if b.names[0] == "0.weight")
    Q = torch.kron(b.QG, b.QA)
    assert rel(b.S.reshape(-1), (Q.T @ Fl @ Q).diagonal()) < 1e-10
    assert rel(b.S.sum(), Fl.trace()) < 1e-12


def test_optimizer_kfac_400_input_layer(wide):
    """NaturalGradient's moving average (ema=0: the batch itself) keeps the same factors as fk.fisher."""
    m0, X, ref = wide
    import copy

    m = copy.deepcopy(m0)
    opt = fk.optim.NaturalGradient(m, lr=1e-3, structure="kfac", kind="exact", ema=0.0, update_every=1)
    y = torch.zeros(10, dtype=torch.long)
    opt.zero_grad()
    nn.functional.cross_entropy(m(X), y).backward()
    opt.step()
    for k, (A, G) in ref.items():
        gA, gG = opt.pre.curvature.factors()[k + ".weight"]
        assert rel(gA, A) < TOL and rel(gG, G) < TOL


# ---- patched thresholds on conv / sequence models -------------------------------------------------------


class SeqPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(6, 7)
        self.head = nn.Linear(7, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.inner(x)).mean(1))


@pytest.fixture(scope="module")
def small_models():
    out = {}
    for name in ("cnn", "conv1d"):
        m, X = make(name)
        out[name] = (m, X, brute_kfac(m, X, layers(m)))
    torch.manual_seed(0)
    m = SeqPool().double().eval()
    X = torch.randn(5, 4, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    out["seq"] = (m, X, brute_kfac(m, X, layers(m)))
    return out


@pytest.mark.parametrize("sym_block,sym_max", [(2, 4096), (3, 4096), (2, 5)])
@pytest.mark.parametrize("name", ["cnn", "conv1d", "seq"])
def test_kfac_factors_with_patched_gram_thresholds(small_models, monkeypatch, name, sym_block, sym_max):
    monkeypatch.setattr(accumulate, "SYM_BLOCK", sym_block)
    monkeypatch.setattr(accumulate, "SYM_MAX", sym_max)
    m, X, ref = small_models[name]
    K = fk.fisher(m, (X, None), structure="kfac", batch_size=2)
    for k, (A, G) in ref.items():
        gA, gG = K.factors()[k + ".weight"]
        assert rel(gA, A) < TOL, f"A of {k}"
        assert rel(gG, G) < TOL, f"G of {k}"
    F = brute_fisher(m, X, None, "categorical", "exact")
    assert rel(fk.fisher(m, (X, None), structure="ekfac", batch_size=2).to_dense(), ekfac_dense(m, ref, F)) < 1e-9


# ---- diagonal fallback for blocks over DENSE_BLOCK_LIMIT ------------------------------------------------


@pytest.mark.parametrize("kind", ["exact", "empirical"])
def test_block_diagonal_fallback(monkeypatch, kind):
    from fisherkit.curvature import block

    monkeypatch.setattr(block, "DENSE_BLOCK_LIMIT", 20)  # layer 0 (25 parameters) diagonal, layer 2 (18) dense
    m, X = make("mlp")
    y = torch.randint(0, 3, (9,), generator=torch.Generator().manual_seed(0))
    F = brute_fisher(m, X, y, "categorical", kind)
    B = fk.fisher(m, (X, y), kind=kind, structure="block", batch_size=4)
    assert [b.kind for b in B.blocks] == ["diag", "dense"]
    i0, i2 = layer_index(m, "0"), layer_index(m, "2")
    ref = torch.zeros_like(F)
    ref[i0, i0] = F[i0, i0]
    ref[i2[:, None], i2[None, :]] = F[i2[:, None], i2[None, :]]
    assert rel(B.to_dense(), ref) < TOL
    assert rel(B.diag(), F.diagonal()) < TOL


def test_block_diagonal_fallback_conv_layers(monkeypatch):
    """Conv layers (shared positions: per-sample gradients summed over patches) over a patched limit of 19
    keep the brute-force diagonal; the 18-parameter conv and the 27-parameter head split the same way."""
    from fisherkit.curvature import block

    monkeypatch.setattr(block, "DENSE_BLOCK_LIMIT", 19)
    m, X = make("cnn")  # conv 20 parameters, conv 18, linear 27
    F = brute_fisher(m, X, None, "categorical", "exact")
    B = fk.fisher(m, (X, None), structure="block", batch_size=2)
    assert [b.kind for b in B.blocks] == ["diag", "dense", "diag"]
    ref = torch.zeros_like(F)
    for k, dense in (("0", False), ("2", True), ("4", False)):
        idx = layer_index(m, k)
        ref[idx[:, None], idx[None, :]] = F[idx[:, None], idx[None, :]] if dense else torch.diag(F[idx, idx])
    assert rel(B.to_dense(), ref) < TOL


class SeqPool2(nn.Module):
    """A Linear on [B, T = 2, d] (two shared positions: neither the T = 1 fast path nor a long sequence)."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(3, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.inner(x)).sum(1))


def test_two_position_layer_diagonal_fallback_and_ekfac(monkeypatch):
    from fisherkit.curvature import block

    torch.manual_seed(0)
    m = SeqPool2().double().eval()
    X = torch.randn(6, 2, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    F = brute_fisher(m, X, None, "categorical", "exact")
    ref = brute_kfac(m, X, layers(m))
    assert rel(fk.fisher(m, (X, None), structure="ekfac", batch_size=4).to_dense(), ekfac_dense(m, ref, F)) < 1e-9
    monkeypatch.setattr(block, "DENSE_BLOCK_LIMIT", 10)  # both layers (16 and 15 parameters) diagonal
    B = fk.fisher(m, (X, None), structure="block", batch_size=4)
    assert [b.kind for b in B.blocks] == ["diag", "diag"]
    assert rel(B.to_dense(), torch.diag(F.diagonal())) < TOL


def test_kfac_fallback_diagonal_for_large_non_hooked_module(monkeypatch):
    """KFAC on Embedding + LayerNorm + Linear: the embedding (28 parameters, over a patched limit of 10)
    keeps its diagonal, the LayerNorm (8) a dense block, the head Kronecker factors."""
    from fisherkit.curvature import block

    monkeypatch.setattr(block, "DENSE_BLOCK_LIMIT", 10)
    m, X = make("ln_emb")
    F = brute_fisher(m, X, None, "categorical", "exact")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        K = fk.fisher(m, (X, None), structure="kfac", batch_size=4)
    kinds = {b.names[0]: b.kind for b in K.blocks}
    assert kinds == {"emb.weight": "diag", "norm.weight": "dense", "head.weight": "kron"}
    D = K.to_dense()
    emb, norm = torch.arange(0, 28), torch.arange(28, 36)
    assert rel(D[emb[:, None], emb[None, :]], torch.diag(F.diagonal()[emb])) < TOL
    assert rel(D[norm[:, None], norm[None, :]], F[norm[:, None], norm[None, :]]) < TOL
    ref = brute_kfac(m, X, {"head": m.head})
    idx = layer_index(m, "head")
    assert rel(D[idx[:, None], idx[None, :]], kfac_dense(m, ref)[idx[:, None], idx[None, :]]) < TOL


# ---- Lanczos low-rank ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cnn_fisher():
    m, X = make("cnn")
    return m, X, brute_fisher(m, X, None, "categorical", "exact")


@pytest.mark.parametrize("how", ["max_memory", "dense_limit"])
def test_lowrank_lanczos_matches_top_eigenpairs(cnn_fisher, monkeypatch, how):
    m, X, F = cnn_fisher
    p = F.shape[0]
    kw = {}
    if how == "max_memory":
        kw["max_memory"] = 8 * p * p - 1  # one byte short of the dense Gram
    else:
        from fisherkit.curvature import dense

        monkeypatch.setattr(dense, "DENSE_LIMIT", p - 1)
    called = {"n": 0}
    from fisherkit.curvature.implicit import Implicit

    real = Implicit.eig

    def spy(self, k=None):
        called["n"] += 1
        return real(self, k)

    monkeypatch.setattr(Implicit, "eig", spy)
    L = fk.fisher(m, (X, None), structure="lowrank", rank=4, batch_size=2, **kw)
    assert called["n"] == 1  # the Lanczos path, not the dense Gram
    vals, vecs = torch.linalg.eigh(F)
    top, U = vals.flip(0)[:4], vecs.flip(1)[:, :4]
    assert torch.allclose(L.values, top, rtol=1e-8, atol=1e-12)
    assert rel(L.vectors @ L.vectors.T, U @ U.T) < 1e-6  # same top-4 subspace (eigengap > 0)
    assert rel(L.to_dense(), (U * top) @ U.T) < 1e-6
    v = torch.randn(p, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    ref = U @ ((U.T @ v) / (top + 0.1)) + (v - U @ (U.T @ v)) / 0.1  # Woodbury on the top-4 part
    assert rel(L.solve(v, 0.1), ref) < 1e-6
