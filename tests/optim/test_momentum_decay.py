"""Momentum, weight decay, Levenberg–Marquardt and π-damping with EKFAC, against closed forms (float64).

Reference: the linear-Gaussian model of optim_fixtures, whose Fisher F = (I/σ²) ⊗ X̃ᵀX̃/N is exact and
independent of θ and whose loss is exactly quadratic (L(θ+Δ) − L(θ) = gᵀΔ + ½ΔᵀFΔ), so two steps of

    n_t = (F̂ + λI)⁻¹ (g_t + η θ_t),   b_t = μ b_{t−1} + n_t (b_1 = n_1),   θ_{t+1} = θ_t − lr · b_t

and the reduction ratio ρ are written out by hand with torch.linalg; an MLP's EKFAC step against
the brute-force Fisher (tests/reference.py).
"""

import copy

import pytest
import torch
from torch import nn

import fisherkit as fk
from fisherkit.optim import NaturalGradient
from fisherkit.optim.damping import levenberg_marquardt
from reference import brute_fisher, layer_index

from .optim_fixtures import closed_form_fisher, flat_params, gaussian_loss, linear_gaussian


def grad_at(model, theta, X, Y, sigma):
    """∇L at the flat parameters ``theta`` (autograd on a copy of the model)."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(theta, m.parameters())
    m.zero_grad()
    gaussian_loss(m, X, Y, sigma).backward()
    return torch.cat([p.grad.reshape(-1) for p in m.parameters()])


def loss_at(model, theta, X, Y, sigma):
    m = copy.deepcopy(model)
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(theta, m.parameters())
        return float(gaussian_loss(m, X, Y, sigma))


@pytest.mark.parametrize("structure", ["dense", "diag"])
@pytest.mark.parametrize("momentum,decay", [(0.9, 0.0), (0.0, 0.3), (0.7, 0.3)])
def test_two_steps_momentum_and_weight_decay_closed_form(structure, momentum, decay):
    model, X, Y, sigma = linear_gaussian()
    ref_model = copy.deepcopy(model)
    lam, lr = 0.05, 0.4
    opt = NaturalGradient(model, lr=lr, structure=structure, kind="exact", damping=lam, update_every=1, ema=0.0,
                          momentum=momentum, weight_decay=decay, likelihood=fk.Gaussian(sigma))
    F = closed_form_fisher(X, Y.shape[1], sigma)
    if structure == "diag":
        F = torch.diag(F.diagonal())
    Fd = F + lam * torch.eye(F.shape[0], dtype=F.dtype)
    theta = flat_params(model)
    b = None
    for _ in range(2):
        opt.zero_grad()
        gaussian_loss(model, X, Y, sigma).backward()
        opt.step()
        n = torch.linalg.solve(Fd, grad_at(ref_model, theta, X, Y, sigma) + decay * theta)
        b = n if b is None else momentum * b + n
        theta = theta - lr * b
        assert torch.allclose(flat_params(model), theta, rtol=1e-10, atol=1e-12)
    if momentum:
        buf = torch.cat([opt.state[p]["momentum_buffer"].reshape(-1) for p in model.parameters()])
        assert torch.allclose(buf, b, rtol=1e-10, atol=1e-12)


def test_per_group_momentum_and_weight_decay():
    """Param groups: weight with μ = 0.8, η = 0.5; bias with neither; a dense F couples them."""
    model, X, Y, sigma = linear_gaussian()
    ref_model = copy.deepcopy(model)
    lam, lr = 0.1, 0.3
    opt = NaturalGradient(model, lr=lr, structure="dense", kind="exact", damping=lam, update_every=1, ema=0.0,
                          likelihood=fk.Gaussian(sigma),
                          params=[{"params": [model.weight], "momentum": 0.8, "weight_decay": 0.5},
                                  {"params": [model.bias]}])
    F = closed_form_fisher(X, Y.shape[1], sigma)
    Fd = F + lam * torch.eye(F.shape[0], dtype=F.dtype)
    nw = model.weight.numel()
    nb = model.bias.numel()
    eta = torch.tensor([0.5] * nw + [0.0] * nb, dtype=torch.float64)
    mu = torch.tensor([0.8] * nw + [0.0] * nb, dtype=torch.float64)
    theta, b = flat_params(model), None
    for _ in range(2):
        opt.zero_grad()
        gaussian_loss(model, X, Y, sigma).backward()
        opt.step()
        n = torch.linalg.solve(Fd, grad_at(ref_model, theta, X, Y, sigma) + eta * theta)
        b = n if b is None else mu * b + n
        theta = theta - lr * b
        assert torch.allclose(flat_params(model), theta, rtol=1e-10, atol=1e-12)


# ---- Levenberg–Marquardt ------------------------------------------------------------------------------


def test_levenberg_marquardt_rule_branches():
    w = 0.5
    assert levenberg_marquardt(1.0, 0.9, w) == 0.5  # ρ > ¾: trusted, λ·ω
    assert levenberg_marquardt(1.0, 0.5, w) == 1.0  # ¼ ≤ ρ ≤ ¾: unchanged
    assert levenberg_marquardt(1.0, 0.75, w) == 1.0 and levenberg_marquardt(1.0, 0.25, w) == 1.0  # edges
    assert levenberg_marquardt(1.0, 0.1, w) == 2.0  # ρ < ¼: λ/ω
    assert levenberg_marquardt(1.0, -3.0, w) == 2.0
    assert levenberg_marquardt(1.0, float("nan"), w) == 2.0 and levenberg_marquardt(1.0, float("inf"), w) == 2.0
    assert levenberg_marquardt(1e-8, 0.9, w) == 1e-8 and levenberg_marquardt(1e4, 0.0, w) == 1e4  # clamped
    assert levenberg_marquardt(3e-8, 0.9, w, lo=1e-9) == pytest.approx(1.5e-8, rel=1e-15)


@pytest.mark.parametrize("c,branch", [(1.0, "shrink"), (2 / 3, "keep"), (0.5, "grow")])
def test_adaptive_damping_in_step_closure(c, branch):
    """The optimizer's Gaussian σ_opt = σ/√c makes F̂ = c·H (H the loss's exact, θ-independent Hessian),
    so ρ = (gᵀΔ + ½ΔᵀHΔ)/(gᵀΔ + ½ΔᵀF̂Δ) ≈ 2 − 1/c for lr = 1: 1, ½, 0 — one per branch of the rule."""
    model, X, Y, sigma = linear_gaussian()
    ref_model = copy.deepcopy(model)
    lam, omega = 1e-3, 2 / 3
    s_opt = sigma / c**0.5
    opt = NaturalGradient(model, lr=1.0, structure="dense", kind="exact", damping=lam, update_every=1, ema=0.0,
                          likelihood=fk.Gaussian(s_opt), adaptive_damping=True, lm_every=1, lm_omega=omega)

    def closure():
        opt.zero_grad()
        loss = gaussian_loss(model, X, Y, sigma)
        loss.backward()
        return loss

    theta0 = flat_params(model)
    g = grad_at(ref_model, theta0, X, Y, sigma)
    H = closed_form_fisher(X, Y.shape[1], sigma)
    Fh = closed_form_fisher(X, Y.shape[1], s_opt)
    assert torch.allclose(Fh, c * H, rtol=1e-12)
    delta = -torch.linalg.solve(Fh + lam * torch.eye(H.shape[0], dtype=H.dtype), g)
    rho = (loss_at(ref_model, theta0 + delta, X, Y, sigma) - loss_at(ref_model, theta0, X, Y, sigma)) / float(
        g @ delta + 0.5 * delta @ Fh @ delta)
    assert rho == pytest.approx(float(g @ delta + 0.5 * delta @ H @ delta) / float(g @ delta + 0.5 * delta @ Fh @ delta),
                                rel=1e-9)  # the loss is exactly quadratic
    opt.step(closure)
    assert torch.allclose(flat_params(model) - theta0, delta, rtol=1e-10, atol=1e-12)
    assert opt.last_rho == pytest.approx(rho, rel=1e-8)
    expected = {"shrink": lam * omega, "keep": lam, "grow": lam / omega}[branch]
    assert opt.damping == pytest.approx(expected, rel=1e-12)
    assert opt.damping == pytest.approx(levenberg_marquardt(lam, rho, omega), rel=1e-12)
    # the model's gradient is restored after the re-evaluation
    assert torch.allclose(torch.cat([p.grad.reshape(-1) for p in model.parameters()]), g, rtol=1e-12)


# ---- π-damping does not apply to EKFAC -------------------------------------------------------------------


def test_ekfac_ignores_pi_damping_linear_gaussian():
    """Here G ⊗ A = F exactly, so EKFAC's step is −lr (F + λI)⁻¹ g, while KFAC's π-damped step is not."""
    lam, lr = 0.2, 0.5
    steps = {}
    for structure in ("ekfac", "kfac"):
        model, X, Y, sigma = linear_gaussian()
        opt = NaturalGradient(model, lr=lr, structure=structure, kind="exact", damping=lam, update_every=1, ema=0.0,
                              likelihood=fk.Gaussian(sigma), pi_damping=True)
        theta0 = flat_params(model)
        g = grad_at(model, theta0, X, Y, sigma)
        opt.zero_grad()
        gaussian_loss(model, X, Y, sigma).backward()
        opt.step()
        steps[structure] = flat_params(model) - theta0
    F = closed_form_fisher(X, Y.shape[1], sigma)
    tikhonov = -lr * torch.linalg.solve(F + lam * torch.eye(F.shape[0], dtype=F.dtype), g)
    assert torch.allclose(steps["ekfac"], tikhonov, rtol=1e-10, atol=1e-12)
    assert float((steps["kfac"] - tikhonov).norm() / tikhonov.norm()) > 1e-3  # π-damping would be visible


def test_ekfac_step_is_tikhonov_in_its_eigenbasis_mlp():
    """MLP, categorical, exact kind, ema = 0: n = Q diag(1/(S + λ)) Qᵀ g per layer with Q = Q_G ⊗ Q_A and
    S = diag(Qᵀ F_block Q) from the brute-force Fisher of the batch — π plays no part."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    X = torch.randn(12, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.randint(0, 3, (12,), generator=torch.Generator().manual_seed(2))
    lam, lr = 0.05, 0.3
    F = brute_fisher(model, X, y, "categorical", "exact")
    opt = NaturalGradient(model, lr=lr, structure="ekfac", kind="exact", damping=lam, update_every=1, ema=0.0,
                          pi_damping=True)
    theta0 = flat_params(model)
    opt.zero_grad()
    nn.functional.cross_entropy(model(X), y).backward()
    g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    opt.step()
    expected = torch.zeros_like(g)
    for b in (b for b in opt.pre.curvature.blocks if b.kind == "ekron"):
        idx = layer_index(model, b.names[0].rsplit(".", 1)[0])
        Q = torch.kron(b.QG, b.QA)
        S = (Q.T @ F[idx[:, None], idx[None, :]] @ Q).diagonal()
        expected[idx] = -lr * (Q @ ((Q.T @ g[idx]) / (S + lam)))
    assert torch.allclose(flat_params(model) - theta0, expected, rtol=1e-9, atol=1e-12)


def test_adaptive_damping_with_weight_decay_is_consistent():
    """The step descends h(θ) = L(θ) + ½η‖θ‖², whose Hessian is F + ηI exactly here; its quadratic model
    (g + ηθ)ᵀΔ + ½Δᵀ(F̂ + ηI)Δ predicts h's decrease exactly, so ρ = 1 and λ shrinks (ρ > ¾)."""
    model, X, Y, sigma = linear_gaussian()
    ref_model = copy.deepcopy(model)
    lam, eta, omega = 1e-3, 2.0, 2 / 3
    opt = NaturalGradient(model, lr=1.0, structure="dense", kind="exact", damping=lam, update_every=1, ema=0.0,
                          likelihood=fk.Gaussian(sigma), adaptive_damping=True, lm_every=1, lm_omega=omega,
                          weight_decay=eta)

    def closure():
        opt.zero_grad()
        loss = gaussian_loss(model, X, Y, sigma)
        loss.backward()
        return loss

    theta0 = flat_params(model)
    opt.step(closure)
    delta = flat_params(model) - theta0

    def h(theta):
        return loss_at(ref_model, theta, X, Y, sigma) + 0.5 * eta * float(theta @ theta)

    F = closed_form_fisher(X, Y.shape[1], sigma)
    g = grad_at(ref_model, theta0, X, Y, sigma) + eta * theta0
    model_red = float(g @ delta + 0.5 * delta @ (F + eta * torch.eye(F.shape[0], dtype=F.dtype)) @ delta)
    rho = (h(theta0 + delta) - h(theta0)) / model_red
    assert rho == pytest.approx(1.0, rel=1e-9)  # the reference: an exact model of the objective
    assert opt.last_rho == pytest.approx(rho, rel=1e-8)
    assert opt.damping == pytest.approx(lam * omega, rel=1e-12)


# ---- Nesterov ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("structure", ["dense", "kfac"])
def test_nesterov_three_steps_closed_form_and_torch_sgd(structure):
    """n_t = (F + λI)⁻¹ g_t (closed-form F, exact for kfac without π-damping on this one-layer model),
    b_t = μ b_{t−1} + n_t (b_1 = n_1), θ ← θ − lr (n_t + μ b_t) by hand; and the same run as
    ``Preconditioner`` + ``torch.optim.SGD(momentum=μ, nesterov=True)`` (torch's own Nesterov)."""
    model, X, Y, sigma = linear_gaussian()
    ref_model, sgd_model = copy.deepcopy(model), copy.deepcopy(model)
    lam, lr, mu = 0.05, 0.3, 0.9
    kw = dict(structure=structure, kind="exact", damping=lam, update_every=1, ema=0.0, likelihood=fk.Gaussian(sigma),
              pi_damping=False)
    opt = NaturalGradient(model, lr=lr, momentum=mu, nesterov=True, **kw)
    kw.pop("update_every")
    pre = fk.optim.Preconditioner(sgd_model, update_every=1, **kw)
    sgd = torch.optim.SGD(sgd_model.parameters(), lr=lr, momentum=mu, nesterov=True)
    Fd = closed_form_fisher(X, Y.shape[1], sigma) + lam * torch.eye(X.shape[1] * Y.shape[1] + Y.shape[1],
                                                                      dtype=torch.float64)
    theta, b = flat_params(model), None
    for _ in range(3):
        for m, o in ((model, opt), (sgd_model, None)):
            m.zero_grad()
            gaussian_loss(m, X, Y, sigma).backward()
            if o is not None:
                o.step()
            else:
                pre.step()
                sgd.step()
        n = torch.linalg.solve(Fd, grad_at(ref_model, theta, X, Y, sigma))
        b = n if b is None else mu * b + n
        theta = theta - lr * (n + mu * b)
        assert torch.allclose(flat_params(model), theta, rtol=1e-9, atol=1e-12)
        assert torch.allclose(flat_params(sgd_model), theta, rtol=1e-9, atol=1e-12)
    buf = torch.cat([opt.state[p]["momentum_buffer"].reshape(-1) for p in model.parameters()])
    assert torch.allclose(buf, b, rtol=1e-9, atol=1e-12)  # the buffer is the heavy ball's, as torch keeps it


def test_nesterov_per_group_and_bad_values():
    model, X, Y, sigma = linear_gaussian()
    with pytest.raises(fk.FisherkitError, match="nesterov"):
        NaturalGradient(model, nesterov=True)  # momentum 0
    with pytest.raises(fk.FisherkitError, match="nesterov"):
        NaturalGradient(model, momentum=0.9, nesterov="yes")
    with pytest.raises(fk.FisherkitError, match="nesterov"):
        NaturalGradient(model, momentum=0.9, params=[{"params": [model.weight], "momentum": 0.0, "nesterov": True},
                                                     {"params": [model.bias]}])
    assert not model._forward_hooks  # refused before the recorder hooked the model
    # per group: Nesterov on the weight only; the bias keeps the heavy ball (closed form, dense F couples them)
    ref_model = copy.deepcopy(model)
    lam, lr, mu = 0.1, 0.2, 0.8
    opt = NaturalGradient(model, lr=lr, structure="dense", kind="exact", damping=lam, update_every=1, ema=0.0,
                          likelihood=fk.Gaussian(sigma), momentum=mu,
                          params=[{"params": [model.weight], "nesterov": True}, {"params": [model.bias]}])
    Fd = closed_form_fisher(X, Y.shape[1], sigma) + lam * torch.eye(model.weight.numel() + model.bias.numel(),
                                                                      dtype=torch.float64)
    ahead = torch.tensor([1.0] * model.weight.numel() + [0.0] * model.bias.numel(), dtype=torch.float64)
    theta, b = flat_params(model), None
    for _ in range(3):
        opt.zero_grad()
        gaussian_loss(model, X, Y, sigma).backward()
        opt.step()
        n = torch.linalg.solve(Fd, grad_at(ref_model, theta, X, Y, sigma))
        b = n if b is None else mu * b + n
        theta = theta - lr * (ahead * (n + mu * b) + (1 - ahead) * b)
        assert torch.allclose(flat_params(model), theta, rtol=1e-10, atol=1e-12)


def test_nesterov_state_dict_and_checkpoint(tmp_path):
    """Resumes bit-exactly (state_dict and safetensors); a state saved before ``nesterov`` existed (no key in its
    param groups) loads as the heavy ball; a non-bool nesterov in a state is refused with nothing loaded."""
    X, y = torch.randn(32, 8, dtype=torch.float64), torch.randint(0, 4, (32,))
    from .optim_fixtures import mlp

    def run(model, opt, k):
        for _ in range(k):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(X), y).backward()
            opt.step()

    kw = dict(lr=0.05, structure="kfac", momentum=0.9, nesterov=True, update_every=2, graft="adam")
    a = mlp()
    oa = NaturalGradient(a, **kw)
    run(a, oa, 3)
    sd = copy.deepcopy(oa.state_dict())
    oa.save(tmp_path / "n.safetensors")
    b, c = copy.deepcopy(a), copy.deepcopy(a)
    ob, oc = NaturalGradient(b, **{**kw, "nesterov": False}), NaturalGradient(c, **{**kw, "nesterov": False})
    ob.load_state_dict(sd)
    oc.load(tmp_path / "n.safetensors")
    assert ob.param_groups[0]["nesterov"] and oc.param_groups[0]["nesterov"]
    run(a, oa, 3), run(b, ob, 3), run(c, oc, 3)
    for p, q, r in zip(a.parameters(), b.parameters(), c.parameters()):
        assert torch.equal(p, q) and torch.equal(p, r)
    old = copy.deepcopy(sd)
    for g in old["param_groups"]:
        del g["nesterov"]
    heavy, d = copy.deepcopy(b), copy.deepcopy(b)
    oh = NaturalGradient(heavy, **{**kw, "nesterov": False})
    oh.load_state_dict(copy.deepcopy(old))
    od = NaturalGradient(d, **{**kw, "nesterov": True})
    od.load_state_dict(old)  # torch takes the saved groups: no key, so the heavy ball
    run(heavy, oh, 2), run(d, od, 2)
    for p, q in zip(heavy.parameters(), d.parameters()):
        assert torch.equal(p, q)
    bad = copy.deepcopy(sd)
    bad["param_groups"][0]["nesterov"] = "yes"
    with pytest.raises(fk.FisherkitError, match="nesterov"):
        od.load_state_dict(bad)
    assert od.param_groups[0].get("nesterov", False) is False
