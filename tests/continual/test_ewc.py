"""EWC penalty: values against brute-force float64 references (per-sample gradients by autograd,
one sample at a time; dense Kronecker products), online mode, heads, save/load, bad input."""

import math

import pytest
import torch
from torch import nn

import fisherkit as fk
from fisherkit.continual import EWC, MultiHeadMLP
from fisherkit.errors import FisherkitError, NonFiniteError, ShapeError

from .conftest import perturb, small_data, small_mlp


def flat_params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def brute_fisher(model, X, kind="exact", y=None):
    """Dense F = (1/N) Σ_n Σ_c p_c g_c g_cᵀ (exact) or g_y g_yᵀ (empirical), one backward per (n, c)."""
    params = list(model.parameters())
    P = sum(p.numel() for p in params)
    F = torch.zeros(P, P, dtype=torch.float64)
    for n in range(X.shape[0]):
        logp = torch.log_softmax(model(X[n : n + 1])[0], -1)
        classes = range(logp.shape[0]) if kind == "exact" else [int(y[n])]
        for c in classes:
            g = torch.autograd.grad(logp[c], params, retain_graph=True)
            g = torch.cat([x.reshape(-1) for x in g])
            w = logp[c].exp().detach() if kind == "exact" else 1.0
            F += w * torch.outer(g, g)
    return F / X.shape[0]


@pytest.mark.parametrize("kind", ["exact", "empirical"])
def test_diag_penalty_matches_brute_force(kind):
    model = small_mlp()
    X, y = small_data()
    F = brute_fisher(model, X, kind, y)
    theta_star = flat_params(model)
    ewc = EWC(model, lam=3.0, kind=kind).consolidate((X, y))
    perturb(model)
    d = flat_params(model) - theta_star
    expected = 0.5 * 3.0 * (F.diagonal() * d * d).sum()
    assert torch.allclose(ewc.penalty(), expected, rtol=1e-10, atol=0)


def test_dense_penalty_and_gradient_match_brute_force():
    model = small_mlp()
    X, y = small_data()
    F = brute_fisher(model, X)
    theta_star = flat_params(model)
    ewc = EWC(model, lam=2.0, structure="dense").consolidate((X, y))
    perturb(model)
    d = flat_params(model) - theta_star
    pen = ewc.penalty()
    assert torch.allclose(pen, d @ F @ d, rtol=1e-10)
    grads = torch.autograd.grad(pen, list(model.parameters()))
    assert torch.allclose(torch.cat([g.reshape(-1) for g in grads]), 2.0 * F @ d, rtol=1e-9, atol=1e-14)


def test_kfac_penalty_is_kronecker_quadratic_form():
    """Reference: dense kron(G, A) on the row-major [W | b] layout, built from the returned factors."""
    model = small_mlp()
    X, y = small_data()
    ewc = EWC(model, lam=1.0, structure="kfac").consolidate((X, y))
    F = ewc.terms[0].fisher
    anchors = {n: p.detach().clone() for n, p in model.named_parameters()}
    perturb(model)
    total = 0.0
    for lin, (w, b) in [(model[0], ("0.weight", "0.bias")), (model[2], ("2.weight", "2.bias"))]:
        A, G = F.factors()[w]
        D = torch.cat([lin.weight.detach() - anchors[w], (lin.bias.detach() - anchors[b])[:, None]], 1)
        vec = D.reshape(-1)
        total += vec @ torch.kron(G, A) @ vec
    assert torch.allclose(ewc.penalty(), 0.5 * total, rtol=1e-10)


def test_separate_mode_sums_tasks_with_own_anchors():
    model = small_mlp()
    XA, yA = small_data(seed=1)
    XB, yB = small_data(seed=2)
    FA, tA = brute_fisher(model, XA).diagonal(), flat_params(model)
    ewc = EWC(model, lam=1.5).consolidate((XA, yA))
    perturb(model, seed=5)
    FB, tB = brute_fisher(model, XB).diagonal(), flat_params(model)
    ewc.consolidate((XB, yB))
    perturb(model, seed=6)
    th = flat_params(model)
    expected = 0.75 * ((FA * (th - tA) ** 2).sum() + (FB * (th - tB) ** 2).sum())
    assert len(ewc.terms) == 2
    assert torch.allclose(ewc.penalty(), expected, rtol=1e-10)


def test_online_mode_decays_and_merges():
    model = small_mlp()
    XA, yA = small_data(seed=1)
    XB, yB = small_data(seed=2)
    FA = brute_fisher(model, XA).diagonal()
    ewc = EWC(model, lam=1.0, mode="online", gamma=0.5).consolidate((XA, yA))
    perturb(model, seed=5)
    FB, tB = brute_fisher(model, XB).diagonal(), flat_params(model)
    ewc.consolidate((XB, yB))
    assert len(ewc.terms) == 1  # diagonal Fishers merge: constant memory
    perturb(model, seed=6)
    d = flat_params(model) - tB  # single anchor: the latest weights
    assert torch.allclose(ewc.penalty(), 0.5 * ((0.5 * FA + FB) * d * d).sum(), rtol=1e-10)


def test_online_kfac_keeps_exact_sum_of_terms():
    model = small_mlp()
    XA, yA = small_data(seed=1)
    XB, yB = small_data(seed=2)
    ewc = EWC(model, lam=1.0, mode="online", gamma=0.25, structure="kfac").consolidate((XA, yA))
    DA = ewc.terms[0].fisher.to_dense()
    perturb(model, seed=5)
    ewc.consolidate((XB, yB))
    DB = ewc.terms[1].fisher.to_dense()
    tB = flat_params(model)
    perturb(model, seed=6)
    d = flat_params(model) - tB
    assert torch.allclose(ewc.penalty(), 0.5 * d @ (0.25 * DA + DB) @ d, rtol=1e-10)


def test_penalty_zero_before_consolidate_and_at_anchor():
    model = small_mlp()
    ewc = EWC(model, lam=10.0)
    p = ewc.penalty()
    assert p.shape == () and float(p) == 0.0
    ewc.consolidate(small_data())
    assert float(ewc.penalty().detach()) == 0.0  # θ = θ*


def test_mode_restored_after_consolidate():
    model = nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.5), nn.Linear(6, 3)).double()
    model.train()
    model[2].eval()  # a mixed state must come back exactly
    EWC(model, lam=1.0).consolidate(small_data())
    assert model.training and model[1].training and not model[2].training
    # Fisher computed in eval mode: deterministic despite dropout
    a = EWC(model, lam=1.0).consolidate(small_data()).terms[0].fisher.diag()
    b = EWC(model, lam=1.0).consolidate(small_data()).terms[0].fisher.diag()
    assert torch.equal(a, b)


def test_new_head_free_and_grown_head_penalised_on_old_rows():
    torch.manual_seed(0)
    model = MultiHeadMLP(4, (5,), [2]).double()
    X, y = small_data(out=2)
    ewc = EWC(model, lam=1.0).consolidate((X, y), params=model.task_parameter_names(0))
    ref = {n: p.detach().clone() for n, p in model.named_parameters()}
    Fd = ewc.terms[0].fisher.unflatten(ewc.terms[0].fisher.diag())
    model.add_head(3)
    model.grow_head(0, 4)
    with torch.no_grad():
        model.heads[1].weight.add_(1.0)      # new head: free
        model.heads[0].weight[2:].add_(1.0)  # new rows of the grown head: free
    assert float(ewc.penalty().detach()) == 0.0
    with torch.no_grad():
        model.heads[0].weight[:2].add_(0.1)  # old rows: penalised
    expected = 0.5 * (Fd["heads.0.weight"] * 0.01).sum()
    assert torch.allclose(ewc.penalty(), expected, rtol=1e-10)
    pen = ewc.penalty()
    g = torch.autograd.grad(pen, model.heads[0].weight)[0]
    assert torch.all(g[2:] == 0) and torch.any(g[:2] != 0)
    assert "heads.1.weight" not in ewc.terms[0].anchor and ref.keys() >= ewc.terms[0].anchor.keys()


def test_shrunk_or_removed_parameter_is_an_error():
    torch.manual_seed(0)
    model = MultiHeadMLP(4, (5,), [3]).double()
    X, y = small_data(out=3)
    ewc = EWC(model, lam=1.0).consolidate((X, y))
    model.heads[0] = nn.Linear(5, 2).double()
    with pytest.raises(ShapeError, match="shrink"):
        ewc.penalty()
    del model.heads[0]
    with pytest.raises(FisherkitError, match="no longer in the model"):
        ewc.penalty()


def test_save_load_roundtrip(tmp_path):
    model = small_mlp()
    for structure, mode in [("diag", "separate"), ("kfac", "online")]:
        ewc = EWC(model, lam=7.0, mode=mode, gamma=0.9, structure=structure)
        ewc.consolidate(small_data(seed=1))
        perturb(model, seed=4)
        ewc.consolidate(small_data(seed=2))
        perturb(model, seed=5)
        path = tmp_path / f"{structure}.safetensors"
        ewc.save(path)
        back = EWC.load(path, model)
        assert back.lam == 7.0 and back.mode == mode and back.num_tasks == 2 and len(back.terms) == len(ewc.terms)
        assert torch.allclose(back.penalty(), ewc.penalty(), rtol=1e-12)


def test_save_is_atomic(tmp_path, monkeypatch):
    model = small_mlp()
    ewc = EWC(model, lam=1.0).consolidate(small_data())
    path = tmp_path / "ewc.safetensors"
    ewc.save(path)
    before = path.read_bytes()
    import safetensors.torch

    def crash(*a, **k):
        raise OSError("disk died mid-save")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    ewc.consolidate(small_data(seed=9))
    with pytest.raises(OSError):
        ewc.save(path)
    assert path.read_bytes() == before  # the consolidated knowledge survives
    assert [p.name for p in tmp_path.iterdir()] == ["ewc.safetensors"]  # no temp litter


def test_load_refuses_other_architecture(tmp_path):
    ewc = EWC(small_mlp(), lam=1.0).consolidate(small_data())
    path = tmp_path / "ewc.safetensors"
    ewc.save(path)
    with pytest.raises(FisherkitError, match="different model.*0.weight has shape"):
        EWC.load(path, small_mlp(h=6))
    with pytest.raises(FisherkitError, match="not a fisherkit EWC file"):
        fk.fisher(small_mlp(), small_data()).save(tmp_path / "f.safetensors")
        EWC.load(tmp_path / "f.safetensors", small_mlp())
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(FisherkitError, match="not a readable safetensors"):
        EWC.load(tmp_path / "bad.safetensors", small_mlp())


@pytest.mark.parametrize("kwargs, match", [
    ({"lam": -1.0}, "lam"), ({"lam": float("nan")}, "lam"), ({"gamma": 1.5}, "gamma"),
    ({"mode": "both"}, "mode"), ({"structure": "implicit"}, "not supported"), ({"kind": "fancy"}, "kind"),
    ({"kind": "squared_batch_mean", "structure": "kfac"}, "diagonal"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(FisherkitError, match=match):
        EWC(small_mlp(), **kwargs)


def test_empty_data_is_an_error():
    X, y = small_data()
    with pytest.raises(FisherkitError, match="empty"):
        EWC(small_mlp(), lam=1.0).consolidate((X[:0], y[:0]))
    with pytest.raises(FisherkitError, match="empty"):
        EWC(small_mlp(), lam=1.0).consolidate([])


def test_non_finite_fisher_is_an_error(monkeypatch):
    X, y = small_data()
    Xbad = X.clone()
    Xbad[3, 1] = float("nan")
    with pytest.raises(NonFiniteError):  # caught by the core on the way in
        EWC(small_mlp(), lam=1.0).consolidate((Xbad, y))
    # a Fisher that comes back non-finite (e.g. overflow in float16) is refused by EWC itself
    from fisherkit.continual import ewc as ewc_module

    real = ewc_module.api.fisher

    def poisoned(*a, **k):
        F = real(*a, **k)
        F.blocks[0].values[0] = float("inf")
        return F

    monkeypatch.setattr(ewc_module.api, "fisher", poisoned)
    with pytest.raises(NonFiniteError, match="non-finite"):
        EWC(small_mlp(), lam=1.0).consolidate((X, y))


def test_squared_batch_mean_is_the_square_of_the_batch_mean_gradient():
    """Reference: autograd of the mean loss of each batch, squared, averaged over batches."""
    model = small_mlp()
    X, y = small_data(n=12)
    ewc = EWC(model, lam=1.0, kind="squared_batch_mean", batch_size=4).consolidate((X, y))
    expected = 0
    for s in range(0, 12, 4):
        loss = nn.functional.cross_entropy(model(X[s : s + 4]), y[s : s + 4])
        g = torch.cat([x.reshape(-1) for x in torch.autograd.grad(loss, list(model.parameters()))])
        expected = expected + g**2 / 3
    assert torch.allclose(ewc.terms[0].fisher.diag(), expected, rtol=1e-10)
    # and it is not the empirical Fisher (mean of per-sample squares), which is larger here
    emp = brute_fisher(model, X, "empirical", y).diagonal()
    assert emp.sum() > 1.5 * expected.sum()


def test_ewc_on_a_language_model_with_hf_batches(tmp_path):
    """EWC for LM fine-tuning: dict batches with labels inside, causal shift, −100 left out; the penalty
    equals λ/2 dᵀ F d with F from fk.fisher under the same options, and survives save/load."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))
    from test_sequence_models import _batch, _model

    model, batch = _model(), _batch()
    ewc = EWC(model, lam=3.0, structure="diag", fisher_options={"shift_labels": True})
    ewc.consolidate(batch)
    F = fk.fisher(model, batch, structure="diag", shift_labels=True)
    theta0 = F.flatten(dict(model.named_parameters())).detach().clone()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    d = F.flatten(dict(model.named_parameters())).detach() - theta0
    torch.testing.assert_close(ewc.penalty(), 0.5 * 3.0 * (F.diag() * d * d).sum(), rtol=1e-10, atol=1e-14)
    ewc.save(tmp_path / "lm.ewc")
    back = EWC.load(tmp_path / "lm.ewc", model)
    assert back.fisher_options == {"shift_labels": True}
    torch.testing.assert_close(back.penalty(), ewc.penalty(), rtol=0, atol=0)
    with pytest.raises(fk.FisherkitError, match="fisher_options"):
        EWC(model, fisher_options={"shfit_labels": True})
