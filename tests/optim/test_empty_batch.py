"""A step on an empty batch (B = 0) with update_every=1: nothing to average into the curvature, so
the estimate stays as it is and the step uses it (the gradient of an empty sum is zero); before any
estimate exists, a named error says what to do. Never a raw reshape error from inside the engine."""

import pytest
import torch
import torch.nn.functional as tF

import fisherkit as fk

from .optim_fixtures import classification_data, mlp

# Remove this mark with the change it names (then these tests pass: they were run against it).


def _step(model, opt, X, y):
    opt.zero_grad()
    tF.cross_entropy(model(X), y, reduction="sum").backward()
    opt.step()


@pytest.mark.parametrize("structure", ["kfac", "ekfac", "diag", "dense"]
                         + ["implicit"])
def test_empty_batch_keeps_the_estimate(structure):
    model = mlp(seed=3)
    opt = fk.optim.NaturalGradient(model, structure=structure, update_every=1, damping=0.1)
    X, y = classification_data(n=16)
    _step(model, opt, X, y)
    before = [p.detach().clone() for p in model.parameters()]
    running = {k: v.clone() for k, v in opt.pre.running.sums().items()} if opt.pre.running is not None else {}
    _step(model, opt, X[:0], y[:0])  # momentum 0: a zero gradient is a zero step
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    if structure != "implicit":  # the moving average is untouched
        assert opt.pre.updates == 1 and all(torch.equal(v, opt.pre.running.sums()[k]) for k, v in running.items())
    _step(model, opt, X, y)  # and training goes on
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_empty_first_batch_is_named():
    model = mlp(seed=3)
    opt = fk.optim.NaturalGradient(model, structure="kfac", update_every=1)
    X, y = classification_data(n=16)
    with pytest.raises(fk.FisherkitError, match="no samples.*drop_last"):
        _step(model, opt, X[:0], y[:0])
