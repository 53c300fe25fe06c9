"""Baseline strategies against closed forms computed in numpy, and the shared select() contract."""

import numpy as np
import pytest
import torch
from torch import nn

from fisherkit.active import BADGE, BAIT, BALD, EGL, Entropy, LeastConfidence, Margin, Random, egl_scores
from fisherkit.errors import FisherkitError, NonFiniteError, ShapeError

ALL = [Random, Entropy, Margin, LeastConfidence, BALD, EGL, lambda: EGL(diversity="cluster"), BADGE, BAIT]


def _probs(model, X):
    with torch.no_grad():
        return torch.softmax(model(X), -1).numpy()


def test_uncertainty_scores_closed_form(small):
    model, X, _, _ = small
    p = _probs(model, X)
    s = np.sort(p, 1)[:, ::-1]
    cases = {Entropy: -(p * np.log(p)).sum(1), Margin: -(s[:, 0] - s[:, 1]), LeastConfidence: 1 - s[:, 0]}
    for cls, ref in cases.items():
        st = cls()
        idx = st.select(model, X, 5)
        np.testing.assert_allclose(st.scores_.numpy(), ref, rtol=1e-12, atol=1e-14)
        assert set(idx.tolist()) == set(np.argsort(-ref)[:5].tolist())


def test_egl_strategy_uses_egl_scores(small):
    model, X, _, _ = small
    st = EGL()
    idx = st.select(model, X, 4)
    torch.testing.assert_close(st.scores_, egl_scores(model, X))
    assert set(idx.tolist()) == set(egl_scores(model, X).topk(4).indices.tolist())
    # temperature T: same as scoring the model with logits divided by T
    st2 = EGL(temperature=2.0)
    st2.select(model, X, 4)
    tempered = nn.Sequential(model, type("Div", (nn.Module,), {"forward": lambda self, x: x / 2.0})())
    torch.testing.assert_close(st2.scores_, egl_scores(tempered, X))


@pytest.mark.parametrize("make", ALL)
def test_select_contract(small, make):
    model, X, XL, _ = small
    st = make()
    idx = st.select(model, X, 7, X_labeled=XL)
    assert idx.dtype == torch.long and idx.shape == (7,)
    assert len(set(idx.tolist())) == 7 and int(idx.min()) >= 0 and int(idx.max()) < X.shape[0]
    assert st.scores_.shape == (X.shape[0],)
    assert len(set(st.select(model, X, X.shape[0]).tolist())) == X.shape[0]  # k = pool size works


def test_bald_closed_form_and_reproducible(small):
    """BALD = H[mean p] − mean H[p] over dropout masks; with dropout it is ≥ 0, and seeded."""
    model, X, _, _ = small
    a, b = BALD(generator=3), BALD(generator=3)
    a.select(model, X, 3)
    b.select(model, X, 3)
    torch.testing.assert_close(a.scores_, b.scores_)
    assert (a.scores_ >= -1e-12).all() and a.scores_.max() > 0
    # a model with its own Dropout layer: reference by hand with the same seed
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Dropout(0.3), nn.Linear(6, 3)).double().eval()
    st = BALD(n_samples=4, generator=1)
    st.select(m, X, 2)
    assert not m.training and not m[2].training  # modes restored
    m[2].train()
    with torch.random.fork_rng():
        torch.manual_seed(1 * 100003 + 1)
        P = torch.stack([torch.softmax(m(X), -1) for _ in range(4)]).detach()
    H = lambda q: -(q * q.log()).sum(-1)  # noqa: E731
    torch.testing.assert_close(st.scores_, H(P.mean(0)) - H(P).mean(0))


def test_random_is_seeded_and_uniform(small):
    model, X, _, _ = small
    a, b = Random(generator=5).select(model, X, 10), Random(generator=5).select(model, X, 10)
    assert a.tolist() == b.tolist()
    counts = np.zeros(X.shape[0])
    r = Random(generator=0)
    for _ in range(600):
        counts[r.select(model, X, 6).numpy()] += 1
    # each point is picked with probability 6/60: mean count 60, binomial sd ≈ 7.3
    assert abs(counts.mean() - 60) < 1e-9 and counts.min() > 30 and counts.max() < 90


@pytest.mark.parametrize("make", ALL)
def test_bad_input(small, make):
    model, X, _, _ = small
    st = make()
    with pytest.raises(FisherkitError, match="empty"):
        st.select(model, X[:0], 1)
    with pytest.raises(FisherkitError, match="larger than the pool"):
        st.select(model, X, X.shape[0] + 1)
    for k in (0, -3):
        with pytest.raises(FisherkitError, match="at least 1"):
            st.select(model, X, k)
    with pytest.raises(FisherkitError, match="integer"):
        st.select(model, X, 2.5)
    Xn = X.clone()
    Xn[4, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="row 4"):
        st.select(model, Xn, 2)
    if make is not Random:
        one = nn.Sequential(nn.Linear(4, 1)).double()
        with pytest.raises(ShapeError):
            st.select(one, X, 2)


def test_constructor_errors():
    with pytest.raises(FisherkitError, match="diversity"):
        EGL(diversity="greedy")
    with pytest.raises(FisherkitError, match="temperature"):
        EGL(temperature=0)
    with pytest.raises(FisherkitError, match="samples"):
        BALD(n_samples=1)
    with pytest.raises(FisherkitError, match="lam"):
        BAIT(lam=0)
