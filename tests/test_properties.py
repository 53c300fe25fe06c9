"""Property: whatever a user hands fisherkit — random small models, structures, kinds, and data
corrupted at random (NaN/Inf at random places, huge values, wrong feature counts, bad labels) — the
result is either correct-looking (finite, the right shape) or a ``FisherkitError``; never another
exception type, never a non-finite result, and never a changed model (parameters, buffers,
train/eval mode) or optimizer.

hypothesis draws the cases (small ``max_examples``, ``deadline=None``: ≤ 20 s in all).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as tF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import fisherkit as fk
from fisherkit.errors import FisherkitError

STRUCTURES = ["diag", "kfac", "ekfac", "block", "dense", "lowrank", "implicit"]
KINDS = ["exact", "mc", "empirical"]
CORRUPTIONS = ["none", "nan", "inf", "huge", "features", "label_range", "label_negative", "label_float",
               "label_shape"]
# corruptions whose message comes from the engine's one model call (errors.model_call_error), which
# api.fisher's own loop does not use yet: only the implicit structure / fvp are drawn with them
# and that the engine's statistics are not yet checked as they are accumulated (an inf or huge input
# behind a saturating activation gives a finite output but a NaN diagonal): also drawn for implicit
# only, until that lands (then test_saturating_activation_is_not_silent XPASSes and fails: remove both)
ENGINE_PENDING: set = set()


def build(seed, widths, act, dtype):
    torch.manual_seed(seed)
    layers, d = [], 3
    for w in widths:
        layers += [nn.Linear(d, w), act()]
        d = w
    layers.append(nn.Linear(d, 3))
    return nn.Sequential(*layers).to(dtype)


def snapshot(model):
    return ([t.detach().clone() for t in model.parameters()], [t.detach().clone() for t in model.buffers()],
            [m.training for m in model.modules()])


def unchanged(model, snap) -> bool:
    params, buffers, modes = snap
    return (all(torch.equal(a, b) for a, b in zip(params, model.parameters()))
            and all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))
            and modes == [m.training for m in model.modules()])


def corrupt(X, y, how, data):
    X, y = X.clone(), y.clone()
    i = data.draw(st.integers(0, X.shape[0] - 1), label="row")
    j = data.draw(st.integers(0, X.shape[1] - 1), label="column")
    if how == "nan":
        X[i, j] = float("nan")
    elif how == "inf":
        X[i, j] = data.draw(st.sampled_from([float("inf"), -float("inf")]), label="sign")
    elif how == "huge":
        X[i, j] = 1e30
    elif how == "features":
        X = torch.cat([X, X[:, :1]], 1)
    elif how == "label_range":
        y[i] = 3
    elif how == "label_negative":
        y[i] = -2
    elif how == "label_float":
        y = y.to(X.dtype)
    elif how == "label_shape":
        y = y[:-1]
    return X, y


def finite_result(F, P, dtype):
    v = torch.ones(P, dtype=dtype)
    outs = [F.mv(v), F.solve(v, 0.1)] + ([F.diag()] if F.structure != "implicit" else [])
    return all(o.shape == (P,) and bool(torch.isfinite(o).all()) for o in outs)


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(seed=st.integers(0, 10_000), widths=st.lists(st.integers(1, 5), min_size=0, max_size=2),
       act=st.sampled_from([nn.Tanh, nn.ReLU, nn.Sigmoid]), dtype=st.sampled_from([torch.float32, torch.float64]),
       structure=st.sampled_from(STRUCTURES), kind=st.sampled_from(KINDS), how=st.sampled_from(CORRUPTIONS),
       batch_size=st.sampled_from([None, 3]), data=st.data())
def test_fisher_is_correct_or_a_named_error(seed, widths, act, dtype, structure, kind, how, batch_size, data):
    if how in ENGINE_PENDING and structure != "implicit":
        how = "none"
    model = build(seed, widths, act, dtype)
    model.eval() if data.draw(st.booleans(), label="eval") else model.train()
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(8, 3, generator=g, dtype=dtype)
    y = torch.randint(0, 3, (8,), generator=g)
    X, y = corrupt(X, y, how, data)
    snap = snapshot(model)
    P = sum(p.numel() for p in model.parameters())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            F = fk.fisher(model, (X, y), kind=kind, structure=structure, batch_size=batch_size, rank=2,
                          generator=torch.Generator().manual_seed(seed))
            ok = finite_result(F, P, dtype)
    except FisherkitError:
        ok = True  # a named error is an allowed outcome
    assert ok, f"a non-finite or mis-shaped result for corruption {how!r}"
    assert unchanged(model, snap), "fisher changed the model"


@settings(max_examples=10, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(seed=st.integers(0, 10_000), structure=st.sampled_from(["kfac", "ekfac", "diag", "dense", "implicit"]),
       kind=st.sampled_from(["exact", "empirical"]), how=st.sampled_from(["none", "nan", "inf", "huge"]),
       data=st.data())
def test_optimizer_step_is_correct_or_a_named_error_and_changes_nothing_when_refused(seed, structure, kind, how,
                                                                                     data):
    model = build(seed, [4], nn.Tanh, torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = fk.optim.NaturalGradient(model, structure=structure, kind=kind, update_every=1, damping=0.1,
                                       momentum=0.5)
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(8, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (8,), generator=g)
    opt.zero_grad()
    tF.cross_entropy(model(X), y).backward()
    opt.step()  # a clean first step: there is state to protect
    X, y = corrupt(X, y, how, data)
    snap, state = snapshot(model), copy.deepcopy(opt.state_dict())
    try:
        opt.zero_grad()
        tF.cross_entropy(model(X), y).backward()
        opt.step()
    except FisherkitError:
        assert unchanged(model, snap), "a refused step changed the model"
        after = opt.state_dict()
        assert torch.equal(after["state"][0]["momentum_buffer"], state["state"][0]["momentum_buffer"])
        assert after["fisherkit"]["preconditioner"]["steps"] == state["fisherkit"]["preconditioner"]["steps"]
        return
    assert all(torch.isfinite(p).all() for p in model.parameters()), f"a non-finite step for {how!r}"


@pytest.mark.parametrize("structure", ["diag", "kfac"])
@pytest.mark.parametrize("value", [1e20, float("inf")])
def test_saturating_activation_is_not_silent(structure, value):
    """The issue's example: 1e20 (or inf) behind tanh gives a finite output; the Fisher must not be NaN."""
    model = build(0, [4], nn.Tanh, torch.float32)
    X = torch.randn(8, 3)
    X[2, 1] = value
    y = torch.randint(0, 3, (8,))
    try:
        F = fk.fisher(model, (X, y), structure=structure)
    except FisherkitError:
        return
    assert torch.isfinite(F.diag()).all()
