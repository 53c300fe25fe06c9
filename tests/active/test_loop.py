"""The pool-based loop, its metrics (closed forms), the learner, and their bad-input errors."""

import numpy as np
import pytest
import torch
from torch import nn

from fisherkit.active import ActiveLearner, EGL, Entropy, aulc, labels_to_target, run, summarize
from fisherkit.datasets import gaussian_classification
from fisherkit.errors import FisherkitError, ShapeError


def test_metrics_closed_form():
    n = [10, 20, 30, 40]
    acc = [0.5, 0.7, 0.9, 1.0]
    assert labels_to_target(n, acc, 0.8) == pytest.approx(25.0)  # halfway between 20 and 30
    assert labels_to_target(n, acc, 0.5) == 10
    assert np.isnan(labels_to_target(n, acc, 1.01))
    # trapezoid: (0.6 + 0.8 + 0.95) * 10 / 30
    assert aulc(n, acc) == pytest.approx((0.6 + 0.8 + 0.95) / 3)


def _data():
    X, y = gaussian_classification(240, 5, 3, seed=3)
    return X[:160], y[:160], X[160:], y[160:]


def _mf():
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))


def test_run_shapes_reproducible_and_labels_unique(monkeypatch):
    Xp, yp, Xt, yt = _data()
    picks = []
    orig = EGL.select

    def spy(self, model, X, k, X_labeled=None):
        out = orig(self, model, X, k, X_labeled)
        picks.append((X.shape[0], len(X_labeled)))
        return out

    monkeypatch.setattr(EGL, "select", spy)
    kw = dict(n_initial=6, batch_size=5, rounds=3, seeds=[0, 1], epochs=20)
    a = run(_mf, Xp, yp, Xt, yt, strategies=["random", "egl"], **kw)
    b = run(_mf, Xp, yp, Xt, yt, strategies=["random", "egl"], **kw)
    assert a["n_labels"] == [6, 11, 16, 21]
    for name in ("random", "egl"):
        acc = np.asarray(a["strategies"][name]["acc"])
        assert acc.shape == (2, 4) and ((acc >= 0) & (acc <= 1)).all()
        np.testing.assert_array_equal(acc, b["strategies"][name]["acc"])
    # the pool shrinks and the labelled set grows by one batch per round
    assert picks[:3] == [(154, 6), (149, 11), (144, 16)]
    s = summarize(a, 0.5)
    assert set(s) == {"random", "egl"} and len(s["egl"]["aulc"]) == 2


def test_run_bad_input():
    Xp, yp, Xt, yt = _data()
    with pytest.raises(FisherkitError, match="duplicate"):
        run(_mf, Xp, yp, Xt, yt, initial=[0, 3, 3], rounds=1, epochs=1)
    with pytest.raises(FisherkitError, match="out of range"):
        run(_mf, Xp, yp, Xt, yt, initial=[0, 999], rounds=1, epochs=1)
    with pytest.raises(FisherkitError, match="empty"):
        run(_mf, Xp[:0], yp[:0], Xt, yt)
    Xn = Xp.clone()
    Xn[7, 2] = float("nan")
    with pytest.raises(FisherkitError, match="NaN"):
        run(_mf, Xn, yp, Xt, yt)
    with pytest.raises(FisherkitError, match="exceed the pool"):
        run(_mf, Xp, yp, Xt, yt, batch_size=50, rounds=5)
    with pytest.raises(FisherkitError, match="batch_size"):
        run(_mf, Xp, yp, Xt, yt, batch_size=0)
    with pytest.raises(FisherkitError, match="unknown strategy"):
        run(_mf, Xp, yp, Xt, yt, strategies=["fisher"], rounds=1, epochs=1)
    with pytest.raises(FisherkitError, match="differ in length"):
        run(_mf, Xp, yp[:-1], Xt, yt)
    with pytest.raises(ShapeError, match="at least 2"):
        run(lambda: nn.Linear(5, 1), Xp, yp, Xt, yt, strategies=["egl"], rounds=1, epochs=1)


def test_active_learner_pool_mode():
    Xp, yp, Xt, yt = _data()
    torch.manual_seed(0)
    learner = ActiveLearner(_mf(), Entropy(), X_pool=Xp, epochs=30)
    learner.teach(indices=[0, 1, 2, 3, 4, 5], y=yp[:6])
    idx = learner.query(5)
    assert len(set(idx.tolist())) == 5 and not set(idx.tolist()) & set(range(6))
    learner.teach(indices=idx, y=yp[idx])
    assert len(learner.y_) == 11 and 0 <= learner.score(Xt, yt) <= 1
    with pytest.raises(FisherkitError, match="already labelled"):
        learner.teach(indices=[0], y=yp[:1])
    with pytest.raises(FisherkitError, match="duplicate"):
        learner.teach(indices=[20, 20], y=yp[[20, 20]])
    with pytest.raises(FisherkitError, match="larger than the pool"):
        learner.query(1000)
    # a query on an external pool indexes into that pool; the user's own fit function is used
    calls = []
    own = ActiveLearner(_mf(), "egl", fit_fn=lambda m, X, y: calls.append(len(y)))
    own.fit(Xp[:8], yp[:8])
    assert calls == [8] and own.query(3, X_pool=Xt).max() < len(Xt)
    with pytest.raises(FisherkitError, match="no pool"):
        own.query(3)


def test_active_learner_refits_from_initial_weights():
    """warm_start=False: fitting twice on the same data gives the same model."""
    Xp, yp, _, _ = _data()
    learner = ActiveLearner(_mf(), "random", epochs=15)
    learner.fit(Xp[:20], yp[:20])
    w1 = learner.model[0].weight.detach().clone()
    learner.fit(Xp[:20], yp[:20])
    torch.testing.assert_close(learner.model[0].weight, w1)
