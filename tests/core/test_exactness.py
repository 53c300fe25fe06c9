"""Every structure that claims exactness matches the brute force (tests/reference.py) to 1e-10."""

import warnings

import pytest
import torch

import fisherkit as fk
from models import labels, make
from reference import brute_fisher

MODELS = ["mlp", "cnn", "conv1d", "residual", "ln_emb", "attention", "tokens"]
LIKELIHOODS = ["categorical", "gaussian", "bernoulli"]


def rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@pytest.fixture(scope="module")
def cases():
    out = {}
    for name in MODELS:
        for lik in LIKELIHOODS:
            m, X = make(name)
            y = labels(m, X, lik)
            out[name, lik] = (m, X, y, brute_fisher(m, X, y, lik, "exact"), brute_fisher(m, X, y, lik, "empirical"))
    return out


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("lik", LIKELIHOODS)
@pytest.mark.parametrize("kind", ["exact", "empirical"])
def test_dense_diag_block_implicit_match_brute_force(cases, name, lik, kind):
    m, X, y, F_exact, F_emp = cases[name, lik]
    ref = F_exact if kind == "exact" else F_emp
    data = (X, y)
    D = fk.fisher(m, data, likelihood=lik, kind=kind, structure="dense", batch_size=4)
    assert rel(D.to_dense(), ref) < 1e-10
    assert D.num_samples == X.shape[0]
    diag = fk.fisher(m, data, likelihood=lik, kind=kind, structure="diag", batch_size=4)
    assert rel(diag.diag(), ref.diagonal()) < 1e-10
    # the block structure equals the dense matrix restricted to its blocks
    B = fk.fisher(m, data, likelihood=lik, kind=kind, structure="block", batch_size=4).to_dense()
    mask = B != 0
    assert rel(B[mask], ref[mask]) < 1e-10
    assert rel(B.diagonal(), ref.diagonal()) < 1e-10
    imp = fk.fisher(m, data, likelihood=lik, kind=kind, structure="implicit", batch_size=4)
    v = torch.randn(ref.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    assert rel(imp.mv(v), ref @ v) < 1e-10
    assert rel(fk.fvp(m, data, v, likelihood=lik, kind=kind, batch_size=3), ref @ v) < 1e-10


def test_block_layout_is_per_module():
    m, X = make("mlp")
    B = fk.fisher(m, (X, labels(m, X, "categorical")), structure="block").to_dense()
    # cross terms between the two Linear layers are zero; within a layer (weight × bias) they are not
    w0 = 4 * 5 + 5
    assert torch.all(B[:w0, w0:] == 0)
    assert B[:20, 20:25].abs().sum() > 0


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_lowrank_matches_top_eigenpairs(cases, name):
    m, X, y, F, _ = cases[name, "categorical"]
    L = fk.fisher(m, (X, y), structure="lowrank", rank=5)
    vals, vecs = torch.linalg.eigh(F)
    assert torch.allclose(L.eig(5)[0], vals.flip(0)[:5], rtol=1e-9, atol=1e-12)
    top = vecs.flip(1)[:, :5]
    ref = (top * vals.flip(0)[:5]) @ top.T
    assert rel(L.to_dense(), ref) < 1e-9


def test_kfac_exact_for_one_point_and_one_direction():
    """One sample, one backward direction, no shared positions: G ⊗ A is the exact layer block."""
    m, X = make("mlp")
    x, y = X[:1], labels(m, X[:1], "categorical")
    ref = brute_fisher(m, x, y, "categorical", "empirical")
    K = fk.fisher(m, (x, y), kind="empirical", structure="kfac").to_dense()
    B = fk.fisher(m, (x, y), kind="empirical", structure="block").to_dense()
    assert rel(K, B) < 1e-10
    assert rel(K.diagonal(), ref.diagonal()) < 1e-10
    # exact kind with all C directions and one point: Σ_d g_d g_dᵀ ⊗ a aᵀ, still exact per layer
    Ke = fk.fisher(m, (x, y), kind="exact", structure="kfac").to_dense()
    Be = fk.fisher(m, (x, y), kind="exact", structure="block").to_dense()
    assert rel(Ke, Be) < 1e-10


@pytest.mark.parametrize("name", ["mlp", "cnn", "conv1d"])
def test_ekfac_no_further_from_block_than_kfac(cases, name):
    m, X, y, _, _ = cases[name, "categorical"]
    B = fk.fisher(m, (X, y), structure="block").to_dense()
    K = fk.fisher(m, (X, y), structure="kfac").to_dense()
    E = fk.fisher(m, (X, y), structure="ekfac").to_dense()
    assert (E - B).norm() <= (K - B).norm() + 1e-12
    assert (K - B).norm() > 0  # KFAC is an approximation here, so the comparison means something


def test_kfac_fallback_warns_and_stays_exact_on_other_layers():
    m, X = make("ln_emb")
    y = labels(m, X, "categorical")
    with pytest.warns(UserWarning, match="emb.weight"):
        K = fk.fisher(m, (X, y), structure="kfac")
    ref = brute_fisher(m, X, y, "categorical", "exact")
    # embedding and layer-norm parameters (first 28 + 8 entries) are dense blocks, hence exact
    blk = 28
    assert rel(K.to_dense()[:blk, :blk], ref[:blk, :blk]) < 1e-10


def test_attention_diag_is_exact(cases):
    """MultiheadAttention's packed in-projection and out_proj go through engine/attention.py: still exact."""
    m, X, y, F, _ = cases["attention", "categorical"]
    D = fk.fisher(m, (X, y), structure="diag")
    assert rel(D.diag(), F.diagonal()) < 1e-10


@pytest.mark.parametrize("structure", ["kfac", "ekfac", "block"])
def test_structures_on_attention_keep_every_parameter(cases, structure):
    """Every parameter of a TransformerEncoderLayer lands in a block; the attention projections are
    Kronecker blocks for kfac/ekfac (tests/core/test_attention.py checks their factors) and exact blocks
    for block."""
    m, X, y, F, _ = cases["attention", "categorical"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        K = fk.fisher(m, (X, y), structure=structure)
    assert K.info.size == F.shape[0]
    assert sorted(n for b in K.blocks for n in b.names) == sorted(K.info.names)
    names = [n for n in K.info.names if "out_proj" in n or "in_proj" in n]
    assert len(names) == 4, "the attention layer's projection parameters are missing"
    kinds = {n: b.kind for b in K.blocks for n in b.names}
    if structure == "block":  # one exact block per layer (in_proj weight + bias; out_proj weight + bias)
        for layer in ("in_proj", "out_proj"):
            idx = torch.cat([torch.arange(o, o + k) for n, o, k in zip(K.info.names, K.info.offsets, K.info.numels)
                             if n in names and layer in n])
            assert rel(K.to_dense()[idx][:, idx], F[idx][:, idx]) < 1e-10
    else:
        assert {kinds[n] for n in names} == {"kron" if structure == "kfac" else kinds[names[0]]}
        assert kinds["attn.self_attn.in_proj_weight"] == kinds["head.weight"]


@pytest.mark.parametrize("name,mc", [(n, 1) for n in MODELS] + [("mlp", 2), ("cnn", 3), ("tokens", 2)])
@pytest.mark.parametrize("lik", LIKELIHOODS)
def test_mc_is_the_empirical_fisher_at_the_sampled_labels(name, lik, mc):
    """kind='mc' with a seeded generator is (1/M) Σₘ of the brute-force empirical Fisher at the M label
    draws. The labels are drawn here, batch by batch from the same seed, with the likelihood's sampler
    (whose distribution tests/core/test_mc_unbiased.py checks against closed forms)."""
    from fisherkit.likelihoods import get_likelihood

    m, X = make(name)
    sampler, gen = get_likelihood(lik), torch.Generator().manual_seed(3)
    draws = [[] for _ in range(mc)]
    for i in range(0, X.shape[0], 4):
        with torch.no_grad():
            f = m(X[i : i + 4])
        for k in range(mc):
            draws[k].append(sampler.sample(f, gen))
    ref = sum(brute_fisher(m, X, torch.cat(d), lik, "empirical") for d in draws) / mc
    for s in ("dense", "diag", "block"):
        F = fk.fisher(m, (X, None), likelihood=lik, kind="mc", mc_samples=mc, structure=s, batch_size=4,
                      generator=torch.Generator().manual_seed(3))
        got = F.diag() if s == "diag" else F.to_dense()
        want = ref.diagonal() if s == "diag" else ref if s == "dense" else ref * (got != 0)
        assert rel(got, want) < 1e-10, s
        if s == "block":
            assert rel(got.diagonal(), ref.diagonal()) < 1e-10
