"""Every user mistake the issue lists gets a clear error (or a named warning), and skipping is counted."""

import warnings

import pytest
import torch
import torch.nn.functional as tF
from torch import nn

import fisherkit as fk
from fisherkit.errors import FisherkitError, NonFiniteError, ShapeError
from fisherkit.optim import NaturalGradient, Preconditioner

from .optim_fixtures import classification_data, flat_params, mlp


@pytest.mark.parametrize("kw,match", [
    ({"lr": 0.0}, "lr"), ({"lr": -1.0}, "lr"), ({"damping": 0.0}, "damping"), ({"damping": -1e-3}, "damping"),
    ({"damping": float("nan")}, "damping"), ({"structure": "blockwise"}, "structure"), ({"kind": "true"}, "kind"),
    ({"ema": 1.0}, "ema"), ({"update_every": 0}, "update_every"), ({"kl_clip": 0.0}, "kl_clip"),
    ({"momentum": 1.5}, "momentum"), ({"weight_decay": -1.0}, "weight_decay"), ({"likelihood": "poisson"}, "likelihood"),
])
def test_bad_hyperparameters(kw, match):
    with pytest.raises(FisherkitError, match=match):
        NaturalGradient(mlp(), **kw)


def test_bad_lr_in_param_group():
    model = mlp()
    with pytest.raises(FisherkitError, match="lr"):
        NaturalGradient(model, params=[{"params": list(model.parameters()), "lr": -0.1}])


def test_step_before_backward():
    opt = NaturalGradient(mlp())
    with pytest.raises(FisherkitError, match="before any backward"):
        opt.step()


def test_step_without_a_recorded_forward():
    model = mlp()
    X, y = classification_data()
    opt = NaturalGradient(model)
    with torch.no_grad():
        model(X)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    with pytest.raises(FisherkitError, match="no forward pass"):
        opt.step()


def test_nonfinite_gradient_raises_or_is_skipped():
    X, y = classification_data()
    model = mlp()
    opt = NaturalGradient(model, structure="kfac")
    opt.zero_grad()
    tF.cross_entropy(model(X), y).backward()
    model[0].weight.grad[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="0.weight"):
        opt.step()

    opt = NaturalGradient(model, structure="kfac", skip_nonfinite=True)
    before = flat_params(model)
    opt.zero_grad()
    tF.cross_entropy(model(X), y).backward()
    model[0].weight.grad[0, 0] = float("inf")
    opt.step()
    assert opt.skipped_steps == 1 and torch.equal(flat_params(model), before)
    opt.zero_grad()
    tF.cross_entropy(model(X), y).backward()  # the next good step goes through
    opt.step()
    assert opt.skipped_steps == 1 and not torch.equal(flat_params(model), before)


def test_nonfinite_loss_in_closure():
    X, y = classification_data()
    model = mlp()

    def closure():
        opt.zero_grad()
        loss = tF.cross_entropy(model(X), y) * float("nan")
        loss.backward()
        return loss

    opt = NaturalGradient(model)
    with pytest.raises(NonFiniteError, match="loss"):
        opt.step(closure)
    opt = NaturalGradient(model, skip_nonfinite=True)
    before = flat_params(model)
    opt.step(closure)
    assert opt.skipped_steps == 1 and torch.equal(flat_params(model), before)


def test_likelihood_that_does_not_fit_the_output():
    X, y = classification_data()
    model = nn.Sequential(nn.Linear(8, 1), nn.Flatten(0)).double()  # one number per sample, 1-d output
    NaturalGradient(model, likelihood="categorical")
    with pytest.raises(ShapeError, match="categorical"):
        model(X)
    model2 = nn.Linear(8, 1).double()
    NaturalGradient(model2, likelihood="categorical")
    with pytest.raises(ShapeError, match="at least 2"):
        model2(X)


class Scaled(nn.Module):
    """A custom layer with its own parameter (no Kronecker factorisation for it)."""

    def __init__(self, d):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(d, dtype=torch.float64))

    def forward(self, x):
        return x * self.scale


def test_uncovered_layers_fall_back_with_a_named_warning():
    X, y = classification_data()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 12), nn.LayerNorm(12), nn.Tanh(), Scaled(12), nn.Linear(12, 4)).double()
    with pytest.warns(UserWarning, match=r"1\.weight, 1\.bias, 3\.scale"):
        opt = NaturalGradient(model, structure="kfac", kind="exact", ema=0.0, damping=1e-3, lr=1.0)
    opt.zero_grad()
    tF.cross_entropy(model(X), y).backward()
    g = {n: p.grad.clone() for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    # fallback parameters: step = −g / (diag F + λ), diag F from the core's exact diagonal Fisher
    for name, p in model.named_parameters():
        p.data.copy_(before[name])
    Fd = fk.fisher(model, (X, y), kind="exact", structure="diag", params=["1.weight", "3.scale"]).diag()
    ref = -torch.cat([g["1.weight"], g["3.scale"]]) / (Fd + 1e-3)
    F = opt.pre.curvature  # the one stack's Curvature: fallback parameters are diagonal blocks
    sol = F.unflatten(F.solve(F.flatten(g), 1e-3))
    got = torch.cat([sol[k].reshape(-1) for k in ("1.weight", "3.scale")])
    assert torch.allclose(-got, ref, rtol=1e-10)


def test_layer_called_twice_is_demoted_with_a_warning():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.shared = nn.Linear(4, 4)
            self.head = nn.Linear(4, 3)

        def forward(self, x):
            return self.head(torch.tanh(self.shared(torch.tanh(self.shared(x)))))

    torch.manual_seed(0)
    model = Twice().double()
    X = torch.randn(32, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (32,))
    opt = NaturalGradient(model, structure="kfac", lr=0.1, update_every=1)
    with torch.no_grad():
        loss0 = float(tF.cross_entropy(model(X), y))
    with pytest.warns(UserWarning, match="shared"):
        for _ in range(5):
            opt.zero_grad()
            tF.cross_entropy(model(X), y).backward()
            opt.step()
    assert "shared.weight" in opt.pre.fallback_names
    with torch.no_grad():
        assert float(tF.cross_entropy(model(X), y)) < loss0


def test_non_module_model():
    with pytest.raises(FisherkitError, match="Module"):
        Preconditioner([torch.zeros(3, requires_grad=True)])
