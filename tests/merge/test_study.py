"""The merging study's bookkeeping: choices on validation only, and the every-seed verdict."""

import pytest

from fisherkit.studies import merge as study


def _res(val, test):
    """A result dict over the 'average' and 'diag' families: val/test[variant] = per seed, per task."""
    variants = ["average", *study.FAMILIES["diag"]]
    acc = {v: [{"val": val[v][i], "test": test[v][i]} for i in range(len(val[v]))] for v in variants}
    res = {"setting": "permuted", "seeds": [0, 1], "families": ["average", "diag"], "variants": variants,
           "acc": acc, "extrapolation": {v: [0.0, 0.0] for v in variants}, "chosen": {}}
    for f in res["families"]:
        res["chosen"][f] = [study.choose(res, f, i) for i in range(2)]
    return res


def test_choice_uses_validation_never_test():
    diag = study.FAMILIES["diag"]
    val = {"average": [[0.5, 0.5]] * 2, **{v: [[0.6, 0.6]] * 2 for v in diag}}
    test = {"average": [[0.5, 0.5]] * 2, **{v: [[0.6, 0.6]] * 2 for v in diag}}
    val[diag[3]] = [[0.9, 0.9], [0.6, 0.6]]  # best on validation on seed 0 only
    test[diag[5]] = [[1.0, 1.0], [1.0, 1.0]]  # best on test: must never be chosen
    res = _res(val, test)
    assert res["chosen"]["diag"] == [diag[3], diag[0]]  # seed 1: a tie on validation -> the first of the grid
    s = study.summary(res)
    assert s["diag"]["delta_vs_average"] == pytest.approx([0.1, 0.1])
    assert s["diag"]["wins_every_seed"] is True
    assert s["average"]["wins_every_seed"] is False  # Δ = 0 is not a win


def test_a_loss_on_one_seed_is_not_a_win():
    diag = study.FAMILIES["diag"]
    val = {"average": [[0.5, 0.5]] * 2, **{v: [[0.6, 0.6]] * 2 for v in diag}}
    test = {"average": [[0.5, 0.5], [0.7, 0.7]], **{v: [[0.6, 0.6]] * 2 for v in diag}}
    s = study.summary(_res(val, test))
    assert s["diag"]["delta_vs_average"] == pytest.approx([0.1, -0.1])
    assert s["diag"]["wins_every_seed"] is False
    assert "no" in study.format_table(_res(val, test)).splitlines()[-3]


def test_extrapolation_of_a_per_coordinate_average_is_bounded():
    import torch
    from torch import nn

    torch.manual_seed(0)
    models = [nn.Linear(3, 2) for _ in range(3)]
    names = [n for n, _ in models[0].named_parameters()]
    ps = [dict(m.named_parameters()) for m in models]
    w = torch.rand(3, 8)
    w = w / w.sum(0)  # a convex combination per coordinate
    flat = [torch.cat([p[n].detach().reshape(-1) for n in names]) for p in ps]
    merged = (w * torch.stack(flat)).sum(0)
    vals = {"weight": merged[:6].reshape(2, 3), "bias": merged[6:]}
    assert study.extrapolation(vals, models) <= 3 ** 0.5 + 1e-9
    avg = {n: sum(p[n].detach() for p in ps) / 3 for n in names}
    assert study.extrapolation(avg, models) == pytest.approx(0.0, abs=1e-6)  # float32 rounding
