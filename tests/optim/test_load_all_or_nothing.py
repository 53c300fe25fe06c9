"""Loading an optimizer state is all or nothing: a refused state changes neither torch's part (lr,
momentum, weight decay, momentum buffers) nor the preconditioner's (counters, damping, RNG state,
moving average, curvature), whether it comes from ``load_state_dict`` or a safetensors checkpoint.

Reference: a deep snapshot of the optimizer taken before the failed call, compared tensor by tensor.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as tF

import fisherkit as fk
from fisherkit.optim import NaturalGradient, Preconditioner

from .optim_fixtures import classification_data, mlp

STRUCTURES = ["kfac", "ekfac", "diag", "dense"]


def trained(structure="kfac", kind="mc", hidden=12, steps=2, **kw):
    model = mlp(hidden=hidden, seed=1)
    cfg = dict(lr=0.05, structure=structure, kind=kind, momentum=0.9, weight_decay=1e-3, update_every=1,
               generator=3)
    cfg.update(kw)
    opt = NaturalGradient(model, **cfg)
    X, y = classification_data(n=32)
    for _ in range(steps):
        opt.zero_grad()
        tF.cross_entropy(model(X), y).backward()
        opt.step()
    return model, opt


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)


def snapshot(opt):
    pre = opt.pre
    return (copy.deepcopy(opt.state_dict()), pre.plan, pre.recorder, pre.running, pre.curvature, pre.kfac,
            copy.deepcopy(opt.param_groups[0]["lr"]))


def unchanged(opt, snap) -> bool:
    sd, plan, rec, running, curv, kfac, _ = snap
    pre = opt.pre
    return (same(opt.state_dict(), sd) and pre.plan is plan and pre.recorder is rec and pre.running is running
            and pre.curvature is curv and pre.kfac is kfac)


def refused(opt, state, match=None):
    snap = snapshot(opt)
    with pytest.raises(fk.FisherkitError, match=match):
        opt.load_state_dict(state)
    assert unchanged(opt, snap)


def test_other_structure_changes_nothing():
    _, src = trained("diag", lr=0.5, momentum=0.1)
    _, dst = trained("kfac")
    refused(dst, copy.deepcopy(src.state_dict()), "structure")


def test_other_kind_changes_nothing():
    _, src = trained("kfac", kind="exact", lr=0.5)
    _, dst = trained("kfac", kind="mc")
    refused(dst, copy.deepcopy(src.state_dict()), "kind")


def test_same_names_other_shapes_changes_nothing():
    _, src = trained("kfac", hidden=5, lr=0.5)
    _, dst = trained("kfac", hidden=12)
    refused(dst, copy.deepcopy(src.state_dict()), "shape")


def _pre_tensors(sd):
    return sd["fisherkit"]["preconditioner"]["tensors"]


def _nan_running(sd):
    t = _pre_tensors(sd)
    k = next(k for k in t if k.startswith("running."))
    t[k] = t[k].clone()
    t[k].view(-1)[0] = float("nan")


def _inf_curvature(sd):
    t = _pre_tensors(sd)
    k = next(k for k in t if k.startswith("curvature."))
    t[k] = t[k].clone()
    t[k].view(-1)[-1] = float("inf")


def _running_other_shape(sd):
    t = _pre_tensors(sd)
    k = next(k for k in t if k.startswith("running."))
    t[k] = torch.zeros(3, 3, dtype=t[k].dtype)


def _curvature_other_shape(sd):
    t = _pre_tensors(sd)
    k = next(k for k in t if k.startswith("curvature."))
    t[k] = t[k].reshape(-1)[:-1].clone() if t[k].dim() == 1 else t[k][:-1, :-1].clone()


def _curvature_missing(sd):
    t = _pre_tensors(sd)
    del t[next(k for k in t if k.startswith("curvature."))]


def _momentum_other_shape(sd):
    sd["state"][0]["momentum_buffer"] = torch.zeros(2, 2, dtype=torch.float64)


def _momentum_nan(sd):
    sd["state"][1]["momentum_buffer"] = torch.full_like(sd["state"][1]["momentum_buffer"], float("nan"))


def _lr_nan(sd):
    sd["param_groups"][0]["lr"] = float("nan")


def _momentum_out_of_range(sd):
    sd["param_groups"][0]["momentum"] = 3.0


def _generator_garbage(sd):
    sd["fisherkit"]["preconditioner"]["generator"] = torch.zeros(3, dtype=torch.uint8)


def _steps_missing(sd):
    del sd["fisherkit"]["preconditioner"]["steps"]


def _steps_negative(sd):
    sd["fisherkit"]["preconditioner"]["steps"] = -4


def _damping_nan(sd):
    sd["fisherkit"]["preconditioner"]["damping"] = float("nan")


CORRUPTIONS = [_nan_running, _inf_curvature, _running_other_shape, _curvature_other_shape, _curvature_missing,
               _momentum_other_shape, _momentum_nan, _lr_nan, _momentum_out_of_range, _generator_garbage,
               _steps_missing, _steps_negative, _damping_nan]


# every corruption on KFAC; the ones that touch a structure's own tensors on every structure
CASES = [("kfac", c) for c in CORRUPTIONS] + [(s, c) for s in STRUCTURES[1:] for c in
                                              (_nan_running, _running_other_shape, _curvature_other_shape)]


@pytest.mark.parametrize("structure,corrupt", CASES, ids=[f"{s}-{c.__name__.strip('_')}" for s, c in CASES])
def test_corrupt_state_dict_changes_nothing(structure, corrupt):
    _, src = trained(structure, lr=0.5, momentum=0.3, damping=0.1)
    _, dst = trained(structure)
    sd = copy.deepcopy(src.state_dict())
    corrupt(sd)
    refused(dst, sd)
    dst.load_state_dict(copy.deepcopy(src.state_dict()))  # the intact state still loads afterwards
    assert dst.param_groups[0]["lr"] == 0.5 and dst.damping == 0.1


@pytest.mark.parametrize("corrupt", [_nan_running, _running_other_shape, _curvature_other_shape,
                                     _generator_garbage, _steps_missing],
                         ids=lambda f: f.__name__.strip("_"))
def test_preconditioner_alone_is_all_or_nothing(corrupt):
    _, src = trained("kfac", damping=0.1)
    _, dst = trained("kfac")
    sd = {"fisherkit": {"preconditioner": copy.deepcopy(src.pre.state_dict())}, "state": {0: {}},
          "param_groups": []}
    corrupt(sd)
    pre = dst.pre
    before = copy.deepcopy(pre.state_dict())
    objs = (pre.plan, pre.recorder, pre.running, pre.curvature)
    with pytest.raises(fk.FisherkitError):
        pre.load_state_dict(sd["fisherkit"]["preconditioner"])
    assert same(pre.state_dict(), before)
    assert (pre.plan, pre.recorder, pre.running, pre.curvature) == objs


def test_implicit_state_with_momentum_of_other_shape_changes_nothing():
    _, src = trained("implicit", lr=0.5)
    _, dst = trained("implicit")
    sd = copy.deepcopy(src.state_dict())
    _momentum_other_shape(sd)
    refused(dst, sd, "momentum")


# ---- the safetensors checkpoint ---------------------------------------------------------------

def _rewrite(path, edit_tensors=None, edit_meta=None):
    from fisherkit.curvature.io import read_state, write_state
    from fisherkit.optim.checkpoint import FORMAT, FORMAT_VERSION

    tensors, fields = read_state(path, FORMAT, FORMAT_VERSION, "x")
    if edit_tensors:
        edit_tensors(tensors)
    if edit_meta:
        edit_meta(fields["meta"])
    write_state(tensors, path, FORMAT, FORMAT_VERSION, meta=fields["meta"])


def _file_momentum_other_shape(t):
    k = next(k for k in t if k.startswith("momentum."))
    t[k] = torch.zeros(7, dtype=t[k].dtype)


def _file_nan_running(t):
    k = next(k for k in t if k.startswith("pre.running."))
    t[k] = t[k].clone()
    t[k].view(-1)[0] = float("nan")


def _file_nan_momentum(t):
    k = next(k for k in t if k.startswith("momentum."))
    t[k] = torch.full_like(t[k], float("inf"))


def _file_curvature_other_shape(t):
    k = next(k for k in t if k.startswith("pre.curvature."))
    t[k] = t[k][:-1, :-1].clone()


def _meta_no_steps(m):
    del m["steps"]


def _meta_bad_lr(m):
    m["param_groups"][0]["lr"] = -1.0


def _meta_groups_not_a_list(m):
    m["param_groups"] = "oops"


@pytest.mark.parametrize("edit", [
    (_file_momentum_other_shape, None), (_file_nan_running, None), (_file_nan_momentum, None),
    (_file_curvature_other_shape, None), (None, _meta_no_steps), (None, _meta_bad_lr),
    (None, _meta_groups_not_a_list)], ids=["momentum-shape", "nan-running", "inf-momentum", "curvature-shape",
                                           "no-steps", "bad-lr", "groups-not-a-list"])
def test_corrupt_checkpoint_file_changes_nothing(edit, tmp_path):
    _, src = trained("kfac", lr=0.5, damping=0.1)
    path = tmp_path / "opt.safetensors"
    src.save(path)
    _rewrite(path, *edit)
    _, dst = trained("kfac")
    snap = snapshot(dst)
    with pytest.raises(fk.FisherkitError):
        dst.load(path)
    assert unchanged(dst, snap)


def test_preconditioner_in_front_of_sgd_state_round_trip_still_works():
    model = mlp(seed=2)
    pre = Preconditioner(model, structure="kfac", damping=0.1)
    X, y = classification_data(n=32)
    tF.cross_entropy(model(X), y).backward()
    pre.step()
    other = Preconditioner(mlp(seed=3), structure="kfac")
    other.load_state_dict(copy.deepcopy(pre.state_dict()))
    assert other.damping == 0.1 and other.steps == 1
