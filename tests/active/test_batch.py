"""BADGE and BAIT against dense references that form the C·H gradient embeddings explicitly."""

import torch

from fisherkit.active import BADGE, BAIT, last_layer_features


def _emb(model, X):
    h, f, _ = last_layer_features(model, X)
    h = torch.cat([h, torch.ones(h.shape[0], 1, dtype=h.dtype)], 1)
    return h, torch.softmax(f, -1)


def test_badge_matches_explicit_kmeanspp(small):
    model, X, _, _ = small
    h, p = _emb(model, X)
    r = p - torch.nn.functional.one_hot(p.argmax(-1), 3).double()
    G = torch.einsum("nc,nh->nch", r, h).reshape(len(X), -1)  # explicit gradient embeddings
    gen = torch.Generator().manual_seed(4)
    ref = [int(G.norm(dim=1).argmax())]
    d2 = (G - G[ref[0]]).pow(2).sum(1)
    for _ in range(7):
        d2[ref] = 0
        i = int(torch.multinomial(d2 / d2.sum(), 1, generator=gen))
        ref.append(i)
        d2 = torch.minimum(d2, (G - G[i]).pow(2).sum(1))
    st = BADGE(generator=4)
    got = st.select(model, X, 8)
    assert got.tolist() == ref
    torch.testing.assert_close(st.scores_, G.pow(2).sum(1))


def _dense_bait(model, X, XL, k, lam=1.0, oversample=2.0):
    """Reference: recompute tr((M + Σ U Uᵀ)⁻¹ F) with dense inverses for every candidate."""
    h, p = _emb(model, X)
    hl, pl = _emb(model, XL)
    n, nl, c, d = len(X), len(XL), 3, h.shape[1]

    def sq(p):
        sp = p.sqrt()
        return torch.diag_embed(sp) - p.unsqueeze(-1) * sp.unsqueeze(-2)

    U = torch.einsum("nab,ni->naib", sq(p), h).reshape(n, c * d, c)
    UL = torch.einsum("nab,ni->naib", sq(pl), hl).reshape(nl, c * d, c)
    V, VL = U @ U.transpose(1, 2), UL @ UL.transpose(1, 2)
    F = (V.sum(0) + VL.sum(0)) / (n + nl)
    M = lam * torch.eye(c * d, dtype=F.dtype) + VL.mean(0) * nl / (nl + k)
    U = U * (k / (nl + k)) ** 0.5
    obj = lambda M: torch.trace(torch.linalg.solve(M, F))  # noqa: E731
    chosen = []
    for _ in range(int(oversample * k)):
        vals = [obj(M + U[i] @ U[i].T) if i not in chosen else float("inf") for i in range(n)]
        i = int(torch.tensor(vals).argmin())
        chosen.append(i)
        M = M + U[i] @ U[i].T
    while len(chosen) > k:
        vals = [obj(M - U[i] @ U[i].T) for i in chosen]
        j = int(torch.tensor(vals).argmin())
        M = M - U[chosen[j]] @ U[chosen[j]].T
        chosen.pop(j)
    return chosen


def test_bait_matches_dense_greedy(small):
    model, X, XL, _ = small
    for k in (1, 4):
        got = BAIT().select(model, X, k, X_labeled=XL).tolist()
        assert got == _dense_bait(model, X, XL, k), k
    got = BAIT(lam=0.1).select(model, X[:25], 4).tolist()  # no labelled set
    assert len(set(got)) == 4


def test_bait_prefers_informative_over_duplicates(small):
    """The highest-EGL point repeated 10 times: top-k EGL takes 5 copies; BADGE and clustered EGL take
    one (a copy is at distance 0); BAIT fewer than top-k (each copy's Fisher gain shrinks)."""
    from fisherkit.active import EGL, egl_scores

    model, X, XL, _ = small
    s = egl_scores(model, X)
    best = int(s.argmax())
    pool = torch.cat([X[best].repeat(10, 1), X])
    egl_pick = EGL().select(model, pool, 5)
    assert (egl_pick < 10).sum() == 5  # EGL: five copies of the same point
    bait_pick = BAIT().select(model, pool, 5, X_labeled=XL)
    assert (bait_pick < 10).sum() < 5
    assert (BADGE().select(model, pool, 5) < 10).sum() == 1
    assert (EGL(diversity="cluster").select(model, pool, 5) < 10).sum() == 1
