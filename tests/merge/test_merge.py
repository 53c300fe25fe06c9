"""Fisher merging against dense float64 closed forms (brute-force Fishers from tests/reference.py)."""

import pytest
import torch

import fisherkit as fk
from fisherkit.errors import FisherkitError
from fisherkit.merge import ArchitectureError, MergeError, merge, merge_parameters, with_heads
from reference import brute_fisher

from .conftest import data, fine_tunes, flat, mlp


def _closed_form(Fs, thetas, lams, eps, prior):
    """θ* = (Σλᵢ(Fᵢ + εI))⁻¹ (ΣλᵢFᵢθᵢ + εΣλᵢ prior), dense float64 solve."""
    P = thetas[0].numel()
    A = sum(lam * (F + eps * torch.eye(P, dtype=torch.float64)) for lam, F in zip(lams, Fs))
    b = sum(lam * F @ t for lam, F, t in zip(lams, Fs, thetas)) + eps * sum(lams) * prior
    return torch.linalg.solve(A, b)


def _eps(Fs, lams, rel):
    P = Fs[0].shape[0]
    return rel * sum(lam * float(F.trace()) for lam, F in zip(lams, Fs)) / (sum(lams) * P)


def test_diag_merge_equals_closed_form():
    """Reference: diagonals of brute-force Fishers (jacrev per sample), θ*_j = Σλᵢ Fᵢⱼ θᵢⱼ / Σλᵢ Fᵢⱼ."""
    _, models = fine_tunes(3)
    ds = [data(i) for i in range(3)]
    lams = [0.5, 0.2, 0.3]
    got = merge(models, data=ds, structure="diag", weights=lams, damping=0.0)
    Fd = [torch.diag(brute_fisher(m, X).diagonal()) for m, (X, _) in zip(models, ds)]
    want = _closed_form(Fd, [flat(m) for m in models], lams, 0.0, 0 * flat(models[0]))
    torch.testing.assert_close(flat(got), want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("rel", [1e-4, 0.1])
def test_dense_merge_equals_closed_form(rel):
    """Reference: dense brute-force Fishers, ε relative to the mean diagonal, prior = the weighted average.
    (ε > 0: a categorical Fisher is singular — adding one vector to every head row leaves the softmax.)"""
    _, models = fine_tunes(2)
    ds = [data(i) for i in range(2)]
    lams = [0.7, 0.3]
    got = merge(models, data=ds, structure="dense", weights=lams, damping=rel)
    Fs = [brute_fisher(m, X) for m, (X, _) in zip(models, ds)]
    thetas = [flat(m) for m in models]
    avg = (lams[0] * thetas[0] + lams[1] * thetas[1]) / sum(lams)
    want = _closed_form(Fs, thetas, lams, _eps(Fs, lams, rel), avg)
    torch.testing.assert_close(flat(got), want, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("dense_limit", [10_000, 0])
def test_kfac_merge_equals_dense_solve_of_kronecker_sums(dense_limit):
    """Per layer Σλᵢ(Gᵢ⊗Aᵢ + εI) m = Σλᵢ(Gᵢ⊗Aᵢ)mᵢ + εΣλᵢ m̄ solved densely (the KFAC's to_dense) — by
    eigen-solve (dense_limit large) and by preconditioned CG (dense_limit 0): both equal the reference."""
    _, models = fine_tunes(3)
    ds = [data(i) for i in range(3)]
    lams = [1.0, 2.0, 1.0]
    Ks = [fk.fisher(m, d, structure="kfac") for m, d in zip(models, ds)]
    got = merge_parameters(models, fishers=Ks, weights=lams, damping=1e-3, dense_limit=dense_limit)
    Fs = [K.to_dense() for K in Ks]  # block diagonal: layers are independent, same as per-layer solves
    thetas = [flat(m) for m in models]
    avg = sum(lam * t for lam, t in zip(lams, thetas)) / sum(lams)
    want = _closed_form(Fs, thetas, lams, _eps(Fs, lams, 1e-3), avg)
    torch.testing.assert_close(torch.cat([v.reshape(-1) for v in got.values()]), want, rtol=1e-7, atol=1e-8)


def test_kfac_blocks_above_the_kron_limit_go_to_cg_and_agree(monkeypatch):
    """A Kronecker block above kron_dense_limit is solved by CG (never densified), one at or below it densely,
    and both give the dense reference — whatever dense_limit says for dense blocks."""
    from fisherkit.merge import solve

    _, models = fine_tunes(3)
    ds = [data(i) for i in range(3)]
    Ks = [fk.fisher(m, d, structure="kfac") for m, d in zip(models, ds)]
    calls = []
    real_cg = solve._cg
    monkeypatch.setattr(solve, "_cg", lambda *a, **k: calls.append(a[-1]) or real_cg(*a, **k))
    # layer sizes here: 5 × (4 + 1) = 25 and 3 × (5 + 1) = 18 parameters
    dense = merge_parameters(models, fishers=Ks, damping=1e-3, kron_dense_limit=10_000)
    assert calls == []
    via_cg = merge_parameters(models, fishers=Ks, damping=1e-3, kron_dense_limit=20, cg_tol=1e-12)
    assert len(calls) == 1 and "0.weight" in calls[0]  # only the 25-parameter layer went to CG
    both_cg = merge_parameters(models, fishers=Ks, damping=1e-3, kron_dense_limit=0, dense_limit=10_000, cg_tol=1e-12)
    assert len(calls) == 3
    Fs = [K.to_dense() for K in Ks]
    thetas = [flat(m) for m in models]
    avg = sum(thetas) / 3
    want = _closed_form(Fs, thetas, [1 / 3] * 3, _eps(Fs, [1 / 3] * 3, 1e-3), avg)
    for got in (dense, via_cg, both_cg):
        torch.testing.assert_close(torch.cat([v.reshape(-1) for v in got.values()]), want, rtol=1e-7, atol=1e-8)
    assert solve.KRON_DENSE_LIMIT < 64 * 65  # a 64-wide Linear layer of the digits study goes to CG by default


@pytest.mark.parametrize("structure", ["lowrank", "implicit"])
def test_matrix_free_structures_equal_closed_form(structure):
    """CG on Curvature.mv (lowrank / implicit) equals the dense solve of the same operators."""
    _, models = fine_tunes(2)
    ds = [data(i) for i in range(2)]
    Ks = [fk.fisher(m, d, structure=structure, rank=10) if structure == "lowrank" else fk.fisher(m, d, structure=structure)
          for m, d in zip(models, ds)]
    got = merge_parameters(models, fishers=Ks, damping=1e-2)
    Fs = [K.to_dense() for K in Ks]
    thetas = [flat(m) for m in models]
    want = _closed_form(Fs, thetas, [0.5, 0.5], _eps(Fs, [0.5, 0.5], 1e-2), 0.5 * (thetas[0] + thetas[1]))
    torch.testing.assert_close(torch.cat([v.reshape(-1) for v in got.values()]), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("method,structure", [("fisher", "diag"), ("fisher", "kfac"), ("fisher", "dense"),
                                              ("fisher", "block"), ("fisher", "ekfac"), ("regmean", None),
                                              ("average", None)])
def test_merge_of_identical_models_is_that_model(method, structure):
    m = mlp(3)
    copies = [mlp(3) for _ in range(3)]
    ds = [data(i) for i in range(3)]
    got = merge(copies, data=ds, method=method, structure=structure or "diag", damping=0.0)
    torch.testing.assert_close(flat(got), flat(m), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("method,structure", [("fisher", "diag"), ("fisher", "kfac"), ("fisher", "dense"),
                                              ("regmean", None), ("average", None)])
def test_weight_one_and_zeros_returns_that_model(method, structure):
    _, models = fine_tunes(3)
    ds = [data(i) for i in range(3)]
    got = merge(models, data=ds, method=method, structure=structure or "diag", weights=[0, 1, 0], damping=0.0)
    torch.testing.assert_close(flat(got), flat(models[1]), rtol=1e-8, atol=1e-9)


def test_regmean_is_least_squares_merge_of_layer_outputs():
    """Reference: per layer, lstsq of the stacked weighted inputs [x, 1] of every model onto every model's
    own layer outputs: min Σᵢ λᵢ/Nᵢ ‖X̃ᵢ Mᵀ − X̃ᵢ Mᵢᵀ‖² (layer-2 inputs = each model's own hidden units)."""
    _, models = fine_tunes(2)
    ds = [data(0, n=30), data(1, n=50)]
    lams = [0.4, 0.6]
    got = merge(models, data=ds, method="regmean", weights=lams, damping=0.0)
    for li in (0, 2):
        rows, targets = [], []
        for lam, m, (X, _) in zip(lams, models, ds):
            inp = X if li == 0 else torch.tanh(m[0](X)).detach()
            xt = torch.cat([inp, torch.ones(len(inp), 1, dtype=inp.dtype)], 1) * (lam / len(inp)) ** 0.5
            rows.append(xt)
            targets.append(xt @ torch.cat([m[li].weight, m[li].bias[:, None]], 1).detach().T)
        sol = torch.linalg.lstsq(torch.cat(rows), torch.cat(targets)).solution.T
        torch.testing.assert_close(got[li].weight.detach(), sol[:, :-1], rtol=1e-8, atol=1e-9)
        torch.testing.assert_close(got[li].bias.detach(), sol[:, -1], rtol=1e-8, atol=1e-9)


def test_normalize_trace_equals_closed_form_with_unit_mean_diagonal():
    _, models = fine_tunes(2)
    ds = [data(0), data(1)]
    got = merge(models, data=ds, structure="diag", normalize="trace", damping=0.0)
    Fd = [brute_fisher(m, X).diagonal() for m, (X, _) in zip(models, ds)]
    Fd = [f / f.mean() for f in Fd]
    t = [flat(m) for m in models]
    torch.testing.assert_close(flat(got), (Fd[0] * t[0] + Fd[1] * t[1]) / (Fd[0] + Fd[1]), rtol=1e-9, atol=1e-10)


def test_fisher_at_base_and_prior_base():
    """fisher_at='base': both Fishers are the base model's (on each data set); prior='base' centres ε on θ₀."""
    start, models = fine_tunes(2)
    ds = [data(0), data(1)]
    got = merge(models, data=ds, structure="dense", base=start, fisher_at="base", prior="base", damping=0.5)
    Fs = [brute_fisher(start, X) for X, _ in ds]
    want = _closed_form(Fs, [flat(m) for m in models], [0.5, 0.5], _eps(Fs, [0.5, 0.5], 0.5), flat(start))
    torch.testing.assert_close(flat(got), want, rtol=1e-7, atol=1e-8)


def test_task_arithmetic_and_average():
    start, models = fine_tunes(3)
    t0, ts = flat(start), [flat(m) for m in models]
    ta = merge(models, method="task_arithmetic", base=start, scale=0.4)
    torch.testing.assert_close(flat(ta), t0 + 0.4 * sum(t - t0 for t in ts))
    third = merge(models, method="task_arithmetic", base=start, scale=1 / 3)
    torch.testing.assert_close(flat(third), flat(merge(models, method="average")))


def test_keep_heads_and_with_heads():
    """keep=['2'] (the head): merged body, head from models[into]; with_heads gives each model its own."""
    _, models = fine_tunes(2)
    ds = [data(0), data(1)]
    got = merge(models, data=ds, structure="kfac", keep=["2"], into=1)
    torch.testing.assert_close(got[2].weight, models[1][2].weight)
    body = merge_parameters(models, data=ds, structure="kfac", keep=["2"])
    assert set(body) == {"0.weight", "0.bias"}
    torch.testing.assert_close(got[0].weight.detach(), body["0.weight"])
    per = with_heads(got, models, keep=["2"])
    for m, own in zip(per, models):
        torch.testing.assert_close(m[2].weight, own[2].weight)
        torch.testing.assert_close(m[0].weight, got[0].weight)


def test_inputs_untouched_and_global_rng_untouched():
    _, models = fine_tunes(2)
    before = [flat(m).clone() for m in models]
    rng = torch.get_rng_state()
    ds = [data(0), data(1)]
    a = merge(models, data=ds, structure="diag", kind="mc", generator=torch.Generator().manual_seed(1))
    b = merge(models, data=ds, structure="diag", kind="mc", generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.get_rng_state(), rng)
    for m, t in zip(models, before):
        assert torch.equal(flat(m), t)
    assert torch.equal(flat(a), flat(b))
    assert a is not models[0]


def test_bad_input_raises_before_work():
    _, models = fine_tunes(2)
    other = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()
    ds = [data(0), data(1)]
    before = flat(models[0]).clone()

    class Boom:  # a data set that fails if anyone iterates it
        def __iter__(self):
            raise AssertionError("data was read")

    with pytest.raises(ArchitectureError, match="0.weight"):
        merge([models[0], other], data=[Boom(), Boom()])
    for bad, match in [(dict(weights=[1, -1]), "≥ 0"), (dict(weights=[0, 0]), "all zero"), (dict(weights=[1]), "2 models"),
                       (dict(keep=["nope"]), "matches no parameter"), (dict(structure="banana"), "structure"),
                       (dict(method="mean"), "method"), (dict(damping=-1), "damping"),
                       (dict(normalize="l2"), "normalize"), (dict(fisher_at="base"), "base="),
                       (dict(data=[Boom()]), "1 data sets for 2"), (dict(keep=["0", "2"]), "nothing left")]:
        kw = dict(data=[Boom(), Boom()])
        kw.update(bad)
        with pytest.raises(MergeError, match=match):
            merge(models, **kw)
    with pytest.raises(MergeError, match="base="):
        merge(models, method="task_arithmetic")
    with pytest.raises(MergeError, match="structure='kfac'"):
        merge(models, method="regmean", fishers=[fk.fisher(m, d) for m, d in zip(models, ds)])
    with pytest.raises(MergeError, match="covers"):
        merge(models, fishers=[fk.fisher(m, d, params=["0.weight"]) for m, d in zip(models, ds)])
    assert issubclass(MergeError, FisherkitError)
    assert torch.equal(flat(models[0]), before)


def test_average_option_averages_those_and_fisher_merges_the_rest():
    """average=['2']: the head is the λ-average; the body equals the diag closed form of Fishers over the body only
    (reference: brute-force Fisher diagonal, restricted to the body — the head is not merged by the Fisher)."""
    _, models = fine_tunes(2)
    ds = [data(0), data(1)]
    lams = [0.25, 0.75]
    got = merge(models, data=ds, structure="diag", weights=lams, damping=0.0, average=["2"])
    torch.testing.assert_close(got[2].weight, 0.25 * models[0][2].weight + 0.75 * models[1][2].weight)
    nb = sum(p.numel() for p in models[0][0].parameters())
    Fd = [brute_fisher(m, X).diagonal()[:nb] for m, (X, _) in zip(models, ds)]
    t = [flat(m)[:nb] for m in models]
    want = (lams[0] * Fd[0] * t[0] + lams[1] * Fd[1] * t[1]) / (lams[0] * Fd[0] + lams[1] * Fd[1])
    torch.testing.assert_close(flat(got)[:nb], want, rtol=1e-9, atol=1e-10)
