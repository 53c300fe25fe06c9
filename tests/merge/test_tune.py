"""fk.merge.tune: the merge at every ε of a grid equals the dense closed form, and the best score wins."""

import pytest
import torch

import fisherkit as fk
from fisherkit.merge import MergeError, tune
from reference import brute_fisher

from .conftest import data, fine_tunes, flat
from .test_merge import _closed_form, _eps


def test_every_grid_point_is_the_closed_form_and_the_best_is_returned():
    """score = −‖θ − θ_target‖ with θ_target the closed form at ε = 0.1: tune must return exactly that merge,
    and its score table must equal the distances of the brute-force closed forms at every ε."""
    _, models = fine_tunes(2)
    ds = [data(i) for i in range(2)]
    Fs = [brute_fisher(m, X) for m, (X, _) in zip(models, ds)]
    thetas = [flat(m) for m in models]
    avg = 0.5 * (thetas[0] + thetas[1])
    grid = [1e-3, 0.1, 10.0]
    want = {e: _closed_form(Fs, thetas, [0.5, 0.5], _eps(Fs, [0.5, 0.5], e), avg) for e in grid}
    target = want[0.1]
    seen = []

    def score(m):
        seen.append(m)
        return -float((flat(m) - target).norm())

    best, scores = tune(models, data=ds, score=score, dampings=grid, structure="dense")
    assert list(scores) == grid and len(seen) == 3
    for e in grid:
        assert scores[e] == pytest.approx(-float((want[e] - target).norm()), abs=1e-7)
    torch.testing.assert_close(flat(best), target, rtol=1e-7, atol=1e-8)
    # copies, inputs untouched (parameter identity: two fresh flat() tensors may reuse one address)
    assert all(p is not q for m in seen for p, q in zip(m.parameters(), models[0].parameters()))


def test_fishers_are_computed_once_and_reused(monkeypatch):
    import importlib

    tune_module = importlib.import_module("fisherkit.merge.tune")  # the module (the package exports the function)

    calls = []
    real = tune_module.fishers_for
    monkeypatch.setattr(tune_module, "fishers_for", lambda *a, **k: calls.append(1) or real(*a, **k))
    _, models = fine_tunes(3)
    _, scores = tune(models, data=[data(i) for i in range(3)], score=lambda m: 0.0, structure="kfac")
    assert calls == [1] and list(scores) == list(tune_module.DAMPINGS)
    # ties: the first ε of the grid wins, and it is the merge at that ε
    best, _ = tune(models, data=[data(i) for i in range(3)], score=lambda m: 1.0, dampings=[0.5, 2.0], structure="diag")
    ref = fk.merge.merge(models, data=[data(i) for i in range(3)], structure="diag", damping=0.5)
    torch.testing.assert_close(flat(best), flat(ref))


def test_keep_and_average_reach_the_fishers():
    """Per-task heads kept, the rest merged: the Fishers cover the body only (as merge does)."""
    _, models = fine_tunes(2)
    ds = [data(i) for i in range(2)]
    best, _ = tune(models, data=ds, score=lambda m: 0.0, dampings=[0.1], structure="diag", keep=["2"])
    ref = fk.merge.merge(models, data=ds, structure="diag", damping=0.1, keep=["2"])
    torch.testing.assert_close(flat(best), flat(ref))
    assert torch.equal(best[2].weight, models[0][2].weight)


@pytest.mark.parametrize("kw, match", [
    (dict(score=None), "score must be a callable"),
    (dict(score=lambda m: 0.0, dampings=[]), "dampings is empty"),
    (dict(score=lambda m: 0.0, dampings=[-1.0]), "damping"),
    (dict(score=lambda m: 0.0, data=None), "needs data"),
    (dict(score=lambda m: float("nan")), "NaN"),
    (dict(score=lambda m: 0.0, keep=["nope"]), "matches no parameter"),
])
def test_bad_input(kw, match):
    _, models = fine_tunes(2)
    args = dict(data=[data(i) for i in range(2)], dampings=[0.1])
    args.update(kw)
    with pytest.raises(MergeError, match=match):
        tune(models, **args)
