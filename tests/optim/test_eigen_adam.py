"""KFACEigenAdam: Adam's second moment in the KFAC eigenbasis — against a hand computation from the
core's KFAC factors (fk.fisher, kind='exact'), plus exact resumption from a safetensors checkpoint."""

import copy

import pytest
import torch
import torch.nn.functional as tF

import fisherkit as fk
from fisherkit.optim import KFACEigenAdam

from .optim_fixtures import classification_data, flat_params, mlp


def test_first_step_closed_form():
    """Step 1, momentum 0: Δ = −lr Q_G (m / (|m| + ε)) Q_Aᵀ with m = Q_Gᵀ [∇W | ∇b] Q_A, the eigenbases
    of the batch's exact KFAC factors from fk.fisher (sign choices of eigenvectors cancel)."""
    X, y = classification_data(n=32)
    model = mlp()
    lr, eps = 0.01, 1e-8
    F = fk.fisher(copy.deepcopy(model), (X, y), kind="exact", structure="kfac", batch_size=len(X))
    factors = F.factors()
    opt = KFACEigenAdam(model, lr=lr, eps=eps, momentum=0.0, kind="exact", ema=0.0, update_every=1)
    opt.zero_grad()
    tF.cross_entropy(model(X), y).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    for layer in ("0", "2"):
        A, G = factors[f"{layer}.weight"]
        qa, qg = torch.linalg.eigh(A)[1], torch.linalg.eigh(G)[1]
        Gm = torch.cat([grads[f"{layer}.weight"], grads[f"{layer}.bias"][:, None]], 1)
        m = qg.T @ Gm @ qa
        step = -lr * qg @ (m / (m.abs() + eps)) @ qa.T
        got = torch.cat([(model.get_parameter(f"{layer}.weight") - before[f"{layer}.weight"]),
                         (model.get_parameter(f"{layer}.bias") - before[f"{layer}.bias"])[:, None]], 1)
        torch.testing.assert_close(got, step, rtol=1e-6, atol=1e-9)


def test_trains_and_resumes_bit_exactly(tmp_path):
    X, y = classification_data(n=128)
    batches = [(X[i:i + 16], y[i:i + 16]) for i in range(0, 128, 16)]
    cfg = dict(lr=3e-3, momentum=0.9, update_every=2, inv_every=4, seed=2)
    model = mlp(seed=1)
    opt = KFACEigenAdam(model, **cfg)
    with torch.no_grad():
        start = float(tF.cross_entropy(model(X), y))

    def run(m, o, bs):
        for xb, yb in bs:
            o.zero_grad()
            tF.cross_entropy(m(xb), yb).backward()
            o.step()

    run(model, opt, batches[:4])
    opt.save(tmp_path / "eigen.safetensors")
    weights = copy.deepcopy(model.state_dict())
    run(model, opt, batches[4:])
    with torch.no_grad():
        assert float(tF.cross_entropy(model(X), y)) < start
    model2 = mlp(seed=1)
    model2.load_state_dict(weights)
    opt2 = KFACEigenAdam(model2, **{**cfg, "seed": 9})
    opt2.load(tmp_path / "eigen.safetensors")
    run(model2, opt2, batches[4:])
    assert torch.equal(flat_params(model2), flat_params(model))


def test_refuses_other_structures():
    with pytest.raises(fk.FisherkitError):
        KFACEigenAdam(mlp(), structure="diag")
