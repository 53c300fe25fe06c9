"""Grafting, torch learning-rate schedulers, and the measured KL trust region — each against an
independent reference: a one-step closed form, a hand-set learning rate, fk.kl_divergence."""

import copy

import pytest
import torch
import torch.nn.functional as tF

import fisherkit as fk
from fisherkit.optim import NaturalGradient

from .optim_fixtures import classification_data, flat_params, mlp


def _grads_and_step(model, opt, X, y):
    opt.zero_grad()
    tF.cross_entropy(model(X), y).backward()
    g = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    return g, {n: p.detach() - before[n] for n, p in model.named_parameters()}


CFG = dict(structure="dense", kind="exact", damping=1e-2, ema=0.0, update_every=1)


@pytest.mark.parametrize("graft", ["sgd", "adam"])
def test_graft_one_step_closed_form(graft):
    """Δ per tensor = −lr · n · ‖a‖/‖n‖ with n the ungrafted natural gradient (same model, same batch) and
    a = g (SGD) or, at step 1, g/(√((1−β₂)g²/(1−β₂)) + ε) = g/(|g| + ε) (Adam)."""
    X, y = classification_data()
    lr, eps = 0.1, 1e-8
    plain_model, model = mlp(), mlp()
    _, nat = _grads_and_step(plain_model, NaturalGradient(plain_model, lr=1.0, **CFG), X, y)
    g, delta = _grads_and_step(model, NaturalGradient(model, lr=lr, graft=graft, graft_eps=eps, **CFG), X, y)
    for n in g:
        n_dir = -nat[n]  # lr = 1 above: Δ = −n
        a = g[n] if graft == "sgd" else g[n] / (g[n].abs() + eps)
        expect = -lr * n_dir * (a.norm() / n_dir.norm())
        torch.testing.assert_close(delta[n], expect, rtol=1e-10, atol=1e-14)


def test_graft_adam_second_moment_is_adams():
    """After three steps the grafting state is Adam's v = Σ (1−β₂) β₂^(t−s) g_s² (recomputed by hand)."""
    X, y = classification_data()
    model = mlp()
    beta2 = 0.9
    opt = NaturalGradient(model, lr=0.05, graft="adam", graft_beta2=beta2, **CFG)
    v = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(3):
        g, _ = _grads_and_step(model, opt, X[i * 16:(i + 1) * 16], y[i * 16:(i + 1) * 16])
        for n in v:
            v[n] = beta2 * v[n] + (1 - beta2) * g[n] ** 2
    for n, p in model.named_parameters():
        torch.testing.assert_close(opt.state[p]["graft_v"], v[n], rtol=1e-12, atol=0)


def test_graft_adam_checkpoint_resumes_bit_exactly(tmp_path):
    X, y = classification_data(n=96)
    batches = [(X[i:i + 16], y[i:i + 16]) for i in range(0, 96, 16)]
    cfg = dict(lr=0.01, structure="kfac", damping=1e-2, update_every=2, inv_every=4, momentum=0.9, graft="adam",
               seed=3)
    model = mlp(seed=1)
    opt = NaturalGradient(model, **cfg)
    for xb, yb in batches[:3]:
        _grads_and_step(model, opt, xb, yb)
    opt.save(tmp_path / "opt.safetensors")
    weights = copy.deepcopy(model.state_dict())
    for xb, yb in batches[3:]:
        _grads_and_step(model, opt, xb, yb)
    model2 = mlp(seed=1)
    model2.load_state_dict(weights)
    opt2 = NaturalGradient(model2, **{**cfg, "seed": 5})
    opt2.load(tmp_path / "opt.safetensors")
    for xb, yb in batches[3:]:
        _grads_and_step(model2, opt2, xb, yb)
    assert torch.equal(flat_params(model2), flat_params(model))


def test_lr_scheduler_works_unchanged():
    """A torch LambdaLR warm-up drives NaturalGradient exactly as setting param_groups[0]['lr'] by hand does,
    and the first step is the factor times the unscheduled step (momentum 0, same curvature)."""
    X, y = classification_data(n=64)
    batches = [(X[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    factors = [0.1, 0.4, 0.7, 1.0]
    a, b, c = mlp(seed=2), mlp(seed=2), mlp(seed=2)
    opt_a = NaturalGradient(a, lr=0.2, structure="kfac", seed=1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt_a, lambda t: factors[min(t, 3)])
    opt_b = NaturalGradient(b, lr=0.2, structure="kfac", seed=1)
    opt_c = NaturalGradient(c, lr=0.2, structure="kfac", seed=1)
    for t, (xb, yb) in enumerate(batches):
        _, da = _grads_and_step(a, opt_a, xb, yb)
        sched.step()
        opt_b.param_groups[0]["lr"] = 0.2 * factors[t]
        _, db = _grads_and_step(b, opt_b, xb, yb)
        if t == 0:
            _, dc = _grads_and_step(c, opt_c, xb, yb)
            for n in da:
                torch.testing.assert_close(da[n], 0.1 * dc[n], rtol=1e-12, atol=1e-15)
    assert torch.equal(flat_params(a), flat_params(b))
    assert sched.get_last_lr() == [0.2]
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt_a, T_max=4)  # other schedulers: just run
    for xb, yb in batches:
        _grads_and_step(a, opt_a, xb, yb)
        cos.step()
    assert torch.isfinite(flat_params(a)).all()


@pytest.mark.parametrize("structure", ["kfac", "ekfac", "diag"])
def test_measured_kl_clip_keeps_its_bound(structure):
    """kl_clip_mode='measured': after every step the KL moved on the batch, recomputed independently by
    fk.kl_divergence from the parameters before and after, is ≤ κ (bound stated: κ exactly, no slack);
    the same settings with the quadratic clip move more than κ (what the measured mode fixes)."""
    X, y = classification_data(n=128)
    kappa = 1e-3
    moved = {}
    for mode in ("measured", "quadratic"):
        model = mlp(seed=4)
        opt = NaturalGradient(model, lr=1.0, structure=structure, damping=1e-3, update_every=1, ema=0.5, seed=0,
                              kl_clip=kappa, kl_clip_mode=mode)
        kls = []
        for i in range(4):
            xb, yb = X[i * 32:(i + 1) * 32], y[i * 32:(i + 1) * 32]
            opt.zero_grad()
            tF.cross_entropy(model(xb), yb).backward()
            before = flat_params(model)
            opt.step()
            kl = float(fk.kl_divergence(model, before, flat_params(model), [(xb, yb)]))
            kls.append(kl)
            if mode == "measured":
                assert kl <= kappa
                assert opt.last_kl == pytest.approx(kl, rel=1e-9, abs=1e-15)
        moved[mode] = max(kls)
    assert moved["measured"] > 0.5 * kappa  # it still moves (the bound is met by shrinking, not by stopping)
    assert moved["quadratic"] > kappa


def test_measured_kl_clip_needs_a_forward():
    model = mlp()
    opt = NaturalGradient(model, kl_clip=1e-3, kl_clip_mode="measured")
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    with pytest.raises(fk.FisherkitError):
        opt.step()


@pytest.mark.parametrize("bad", [dict(graft="shampoo"), dict(kl_clip_mode="exact"), dict(graft_beta2=1.0),
                                 dict(kl_backtracks=0)])
def test_bad_options_refused(bad):
    with pytest.raises(fk.FisherkitError):
        NaturalGradient(mlp(), **bad)
