"""kind="mc" is an unbiased estimator of the exact Fisher, for every likelihood and structure.

Reference: the float64 brute force of tests/reference.py (per-sample Jacobians: ``brute_fisher``, and the
hand-written KFAC factors ``brute_kfac``), never fisherkit's own exact path. The check is a CLT bound:
R = 50 independent seeded MC Fishers are averaged and, entry by entry, z = (mean − F) / (σ̂/√R) with σ̂
the replicates' standard deviation. Under unbiasedness each z is ≈ N(0, 1) (t with R − 1 degrees of
freedom); we require max |z| ≤ 5 over all entries (P(|t₄₉| > 5) ≈ 8e-6, so over ≤ 1,849 entries a
false alarm has probability ≤ 1.5 %, less for correlated entries; the seeds are fixed). A global scale bias is tested on one scalar per replicate,
t_r = ⟨F̂_r, F⟩/‖F‖² (mean 1 when unbiased): |mean(t) − 1| ≤ 5 standard errors. The power of these
bounds is checked too: a 40 % bias (estimates × 0.6) fails them in every case.

The matrix-free fk.fvp(kind="mc") is held to the same bound. Samplers and KL divergences are checked against closed forms (moments with 5-standard-error bounds;
KL against float64 formulas).
"""

import math

import pytest
import torch

import fisherkit as fk
from fisherkit.likelihoods import Bernoulli, Categorical, Gaussian
from models import make
from reference import brute_fisher, brute_kfac, kfac_dense, layer_index

R = 50
K_SIGMA = 5.0
SIGMA = 0.5  # Gaussian σ ≠ 1: a sampler or residual that drops σ is off by 4× in F
LIKS = {"categorical": Categorical(), "gaussian": Gaussian(sigma=SIGMA), "bernoulli": Bernoulli()}
STRUCTURES = ["diag", "kfac", "block", "dense", "ekfac"]


def z_scores(est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """(mean − ref)/(σ̂/√R) per entry of ``est`` [R, K]; entries with σ̂ = 0 must match ``ref`` to 1e-12."""
    mean, sd = est.mean(0), est.std(0)
    const = sd <= 1e-14 * ref.abs().max()
    if const.any():
        assert float((mean[const] - ref[const]).abs().max()) <= 1e-12 * float(ref.abs().max())
    return ((mean - ref) / (sd / math.sqrt(est.shape[0])))[~const]


def scale_z(est, ref) -> float:
    """z of the mean of t_r = ⟨F̂_r, F⟩/‖F‖² against 1."""
    t = est @ ref / (ref @ ref)
    return float((t.mean() - 1) / (t.std() / math.sqrt(est.shape[0])))


def passes_clt_bound(est, ref) -> bool:
    return float(z_scores(est, ref).abs().max()) <= K_SIGMA and abs(scale_z(est, ref)) <= K_SIGMA


@pytest.fixture(scope="module")
def model():
    return make("mlp")  # 4 -> 5 -> 3, two Linear layers, P = 43, N = 9, float64


@pytest.fixture(scope="module")
def refs(model):
    m, X = model
    mods = {"0": m[0], "2": m[2]}
    out = {}
    for name in LIKS:
        F = brute_fisher(m, X, None, name, "exact", sigma=SIGMA)
        mask = torch.zeros_like(F, dtype=torch.bool)
        for k in mods:
            idx = layer_index(m, k)
            mask[idx[:, None], idx[None, :]] = True
        K = kfac_dense(m, brute_kfac(m, X, mods, name, sigma=SIGMA))
        traces = torch.stack([F[layer_index(m, k)].T[layer_index(m, k)].trace() for k in mods])
        out[name] = {"dense": F, "diag": F.diagonal(), "block": F * mask, "kfac": K, "ekfac": traces}
    return out


_CACHE: dict = {}


def replicates(m, X, lik, structure, mc) -> torch.Tensor:
    """R independent MC estimates [R, K] (seeds 1000·M + r), cached for the module."""
    key = (lik, structure, mc)
    if key not in _CACHE:
        _CACHE[key] = torch.stack([estimate(m, X, lik, structure, mc, 1000 * mc + r) for r in range(R)])
    return _CACHE[key]


def estimate(m, X, lik, structure, mc, seed):
    F = fk.fisher(m, (X, None), likelihood=LIKS[lik], kind="mc", structure=structure, mc_samples=mc,
                  generator=torch.Generator().manual_seed(seed), batch_size=5)
    if structure == "diag":
        return F.diag()
    if structure == "ekfac":  # its basis depends on the sample; its trace per layer (basis-free) does not
        return torch.stack([b.S.sum() for b in F.blocks])
    return F.to_dense().reshape(-1)


@pytest.mark.parametrize("lik", list(LIKS))
@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("mc", [1, 6])  # mc=1 first: mc=6 reuses its replicates
def test_mc_fisher_is_unbiased(model, refs, lik, structure, mc):
    m, X = model
    est = replicates(m, X, lik, structure, mc)
    ref = refs[lik][structure].reshape(-1)
    z = z_scores(est, ref)
    assert float(z.abs().max()) <= K_SIGMA, f"max |z| = {float(z.abs().max()):.2f}"
    assert abs(scale_z(est, ref)) <= K_SIGMA, f"scale z = {scale_z(est, ref):.2f}"
    # power: the same bound rejects a 40 % bias (and a dropped σ for the Gaussian, a 4× bias)
    assert not passes_clt_bound(0.6 * est, ref)
    if mc > 1:  # M labels per point average M single-label Fishers: the spread shrinks like 1/√M
        sd1 = replicates(m, X, lik, structure, 1).std(0)
        ratio = float(est.std(0).norm() / sd1.norm())
        assert 0.5 / math.sqrt(mc) < ratio < 2.0 / math.sqrt(mc)


def test_ekfac_mc_refit_sees_the_same_labels(model):
    """EKFAC's second pass reuses the first pass's sampled labels: with one seed, its basis diagonalises
    the MC KFAC factors and its scaling is diag(Qᵀ B Q) for the MC block Fisher B of the same seed."""
    m, X = model
    for lik in LIKS:
        kw = dict(likelihood=LIKS[lik], kind="mc", mc_samples=3, batch_size=5)
        E = fk.fisher(m, (X, None), structure="ekfac", generator=torch.Generator().manual_seed(11), **kw)
        K = fk.fisher(m, (X, None), structure="kfac", generator=torch.Generator().manual_seed(11), **kw)
        B = fk.fisher(m, (X, None), structure="block", generator=torch.Generator().manual_seed(11), **kw).to_dense()
        for C in (E, K):  # what the result records about itself
            assert C.kind == "mc" and C.likelihood == LIKS[lik].to_config() and C.num_samples == X.shape[0]
        for b in (b for b in E.blocks if b.kind == "ekron"):
            A, G = K.factors()[b.names[0]]
            for Q, M in ((b.QA, A), (b.QG, G)):
                R_ = Q.T @ M @ Q
                assert float((R_ - torch.diag(R_.diagonal())).abs().max()) < 1e-10 * float(M.abs().max())
            idx = layer_index(m, b.names[0].rsplit(".", 1)[0])
            Q = torch.kron(b.QG, b.QA)
            S = (Q.T @ B[idx[:, None], idx[None, :]] @ Q).diagonal().reshape(b.S.shape)
            assert float((b.S - S).norm() / S.norm()) < 1e-10


# ---- samplers and KL divergences against closed forms -------------------------------------------

N_DRAWS = 40_000


def test_gaussian_sample_moments():
    """y ~ N(f, σ²): per output the sample mean is within 5 σ/√n of f and the sample variance within
    5·σ²·√(2/(n−1)) of σ² (the standard error of a Gaussian sample variance)."""
    f = torch.tensor([[0.3, -1.2], [2.0, 0.0]], dtype=torch.float64)
    lik = Gaussian(sigma=SIGMA)
    ys = torch.stack([lik.sample(f, torch.Generator().manual_seed(0)) for _ in range(1)])  # shape check
    assert ys.shape[1:] == f.shape and ys.dtype == f.dtype
    g = torch.Generator().manual_seed(1)
    y = lik.sample(f.expand(N_DRAWS, 2, 2), g)
    mean, var = y.mean(0), y.var(0)
    assert float((mean - f).abs().max()) <= 5 * SIGMA / math.sqrt(N_DRAWS)
    assert float((var - SIGMA**2).abs().max()) <= 5 * SIGMA**2 * math.sqrt(2 / (N_DRAWS - 1))
    # a different seed gives other draws; the same seed the same ones
    assert torch.equal(lik.sample(f, torch.Generator().manual_seed(3)), lik.sample(f, torch.Generator().manual_seed(3)))


def test_bernoulli_sample_frequencies():
    """y ~ Bernoulli(sigmoid f): values in {0, 1}, frequency within 5 √(p(1−p)/n) of p."""
    f = torch.tensor([[-3.0, -0.5, 0.0, 0.7, 4.0]], dtype=torch.float64)
    p = torch.sigmoid(f)[0]
    y = Bernoulli().sample(f.expand(N_DRAWS, 5), torch.Generator().manual_seed(2))
    assert set(y.unique().tolist()) <= {0.0, 1.0} and y.dtype == f.dtype
    assert bool(((y.mean(0) - p).abs() <= 5 * (p * (1 - p) / N_DRAWS).sqrt()).all())


def test_categorical_sample_frequencies():
    f = torch.tensor([[2.0, -1.0, 0.5, 0.0]], dtype=torch.float64)
    p = torch.softmax(f, -1)[0]
    y = Categorical().sample(f.expand(N_DRAWS, 4), torch.Generator().manual_seed(4))
    freq = torch.bincount(y, minlength=4).double() / N_DRAWS
    assert bool(((freq - p).abs() <= 5 * (p * (1 - p) / N_DRAWS).sqrt()).all())


def test_bernoulli_kl_closed_form():
    """KL[Ber(p) ‖ Ber(q)] = p log(p/q) + (1−p) log((1−p)/(1−q)), with p = σ(a), 1−p = σ(−a) in float64
    (so that logits of ±30 keep their precision); summed over outputs; float32 inputs to 1e-5 relative."""
    g = torch.Generator().manual_seed(5)
    fa = torch.randn(6, 3, generator=g, dtype=torch.float64) * 4
    fb = torch.randn(6, 3, generator=g, dtype=torch.float64) * 4
    fa[0, 0], fb[0, 0] = 30.0, -30.0
    fa[1, 1], fb[1, 1] = -25.0, 2.0
    p, q = torch.sigmoid(fa), torch.sigmoid(fb)
    pn, qn = torch.sigmoid(-fa), torch.sigmoid(-fb)
    ref = (p * (p.log() - q.log()) + pn * (pn.log() - qn.log())).sum(-1)
    got = Bernoulli().kl(fa, fb)
    assert torch.allclose(got, ref, rtol=1e-12, atol=0)
    assert torch.equal(Bernoulli().kl(fa, fa), torch.zeros(6, dtype=torch.float64))
    assert torch.allclose(Bernoulli().kl(fa.float(), fb.float()).double(), ref, rtol=1e-5)
    # second order: KL(a ‖ a + d) = ½ d² p(1−p) + O(d³) (the output Fisher)
    d = 1e-4
    small = Bernoulli().kl(fa[2:3], fa[2:3] + d)
    assert torch.allclose(small, (0.5 * d**2 * p[2:3] * pn[2:3]).sum(-1), rtol=1e-3)


@pytest.mark.parametrize("shape", [(5, 4), (5, 3, 4)])
def test_gaussian_and_categorical_kl_closed_form(shape):
    """σ = 0.7 (at σ = 0.5, /σ² and 2/σ coincide); [B, T, C] outputs sum over positions."""
    g = torch.Generator().manual_seed(6)
    fa, fb = torch.randn(2, *shape, generator=g, dtype=torch.float64)
    sum_extra = lambda t: t.reshape(t.shape[0], -1).sum(1)  # noqa: E731
    assert torch.allclose(Gaussian(sigma=0.7).kl(fa, fb), sum_extra((fa - fb) ** 2) / (2 * 0.7**2), rtol=1e-14)
    p, q = torch.softmax(fa, -1), torch.softmax(fb, -1)
    assert torch.allclose(Categorical().kl(fa, fb), sum_extra(p * (p / q).log()), rtol=1e-12)


@pytest.mark.parametrize("lik", list(LIKS))
@pytest.mark.parametrize("mc", [1, 4])
def test_mc_fisher_vector_product_is_unbiased(model, refs, lik, mc):
    """fk.fvp(kind="mc") (the matrix-free path: JVP, sampled output weights, VJP) averages to F v."""
    m, X = model
    v = torch.randn(refs[lik]["dense"].shape[0], generator=torch.Generator().manual_seed(9),
                    dtype=torch.float64)
    ref = refs[lik]["dense"] @ v
    est = torch.stack([fk.fvp(m, (X, None), v, likelihood=LIKS[lik], kind="mc", mc_samples=mc, batch_size=5,
                              generator=torch.Generator().manual_seed(300 + r)) for r in range(R)])
    assert passes_clt_bound(est, ref) and not passes_clt_bound(0.6 * est, ref)
