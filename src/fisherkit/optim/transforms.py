"""The small pieces a natural-gradient step is composed of, in the order ``NaturalGradient.step``
applies them (optax-style: each is a pure function with a one-step closed form):

    g ← g + η θ                         ``weight_decay``   (L2, before preconditioning)
    n = (F̂ + λI)⁻¹ g                    ``Preconditioner.compute``
    n ← n · ‖a‖/‖n‖ per tensor           ``graft``          (step length of Adam (a = g/(√v̂+ε)) or SGD (a = g))
    b ← μ b + n                          ``momentum``       (heavy ball on the natural gradient)
    d = b, or d = n + μ b                ``momentum``       (``nesterov``: torch.optim.SGD(nesterov=True)'s look-ahead)
    Δ = −lr · d                          ``scale``
    Δ ← ν Δ, ν = min(1, √(κ / (½ΔᵀF̂Δ)))  ``kl_clip``        (trust region on the model's quadratic KL)
    Δ ← ν Δ until KL_batch(θ, θ+Δ) ≤ κ   ``NaturalGradient._clip_measured`` (trust region on the KL moved)
    λ ← LM(λ, ρ)                         ``damping.levenberg_marquardt`` (adaptive damping)
"""

from __future__ import annotations

import math

import torch


def first_nonfinite(tensors: dict) -> str | None:
    """The name of the first tensor with a NaN or inf entry, or None: one fused check (the norms of all
    tensors, one host sync) instead of one per tensor; the per-tensor scan runs only when a norm is not
    finite (a NaN/inf entry, or a finite tensor whose norm overflows — then it reports nothing)."""
    if not tensors:
        return None
    names = list(tensors)
    norms = torch._foreach_norm([tensors[n] for n in names])
    if bool(torch.isfinite(torch.stack([x.float() for x in norms])).all()):
        return None
    return next((n for n in names if not bool(torch.isfinite(tensors[n]).all())), None)


def weight_decay(grads: dict, params: dict, decay: dict) -> dict:
    """g + η θ per parameter (η = ``decay[name]``; parameters without a gradient are left alone)."""
    return {n: (g + decay[n] * params[n] if decay.get(n) and params[n].grad is not None else g)
            for n, g in grads.items()}


def adam(grads: dict, second_moment: dict, step: int, beta2: float = 0.999, eps: float = 1e-8) -> dict:
    """Adam's direction without its first moment: v ← β₂ v + (1 − β₂) g², a = g / (√(v / (1 − β₂ᵗ)) + ε).
    ``second_moment`` (name → v) is updated in place (missing entries start at 0); ``step`` is t ≥ 1."""
    names = list(grads)
    if not names:
        return {}
    g = [grads[n] for n in names]
    for n in names:
        if n not in second_moment:
            second_moment[n] = torch.zeros_like(grads[n])
    v = [second_moment[n] for n in names]
    torch._foreach_mul_(v, beta2)  # one foreach op per stage instead of a few small kernels per tensor
    torch._foreach_addcmul_(v, g, g, value=1 - beta2)
    denom = torch._foreach_sqrt(v)
    torch._foreach_div_(denom, math.sqrt(1 - beta2 ** step))
    torch._foreach_add_(denom, eps)
    return dict(zip(names, torch._foreach_div(g, denom)))


def graft(nat: dict, grads: dict, second_moment: dict, kind: str | None, step: int, beta2: float = 0.999,
          eps: float = 1e-8) -> dict:
    """Layer-wise grafting (Agarwal et al. 2020; as in distributed Shampoo): keep the direction of the
    natural gradient n, take the length of another optimizer's step, per parameter tensor:

        n ← n · ‖a‖ / ‖n‖,   a = g                        (``kind="sgd"``)
                             a = g / (√v̂ + ε), v ← β₂ v + (1 − β₂) g², v̂ = v / (1 − β₂ᵗ)   (``kind="adam"``)

    ``second_moment`` (name → v) is updated in place for ``"adam"``; ``step`` is t ≥ 1. A zero n stays zero.
    """
    if kind is None:
        return nat
    names = list(nat)
    d = [nat[n] for n in names]
    if kind == "adam":
        a = adam({n: grads[n] for n in names}, second_moment, step, beta2, eps)
        a = [a[n] for n in names]
    else:
        a = [grads[n] for n in names]
    na = torch.stack(torch._foreach_norm(a))
    nd = torch.stack(torch._foreach_norm(d))
    ratio = torch.where(nd > 0, na / nd.clamp_min(torch.finfo(nd.dtype).tiny), torch.zeros_like(nd))
    return dict(zip(names, torch._foreach_mul(d, list(ratio.unbind()))))


def _by_value(names, values: dict) -> dict:
    """value -> the names with that value (param groups share hyper-parameters: one foreach op per group)."""
    out: dict = {}
    for n in names:
        out.setdefault(values[n], []).append(n)
    return out


def momentum(buffers: dict, nat: dict, mu: dict, nesterov: dict | None = None) -> dict:
    """Heavy ball: b ← μ b + n (b starts at n), in place in ``buffers``; returns the directions b (or n where μ = 0),
    or, for the names with ``nesterov[name]`` true, Nesterov's look-ahead n + μ b (with the updated b) — the
    direction of ``torch.optim.SGD(momentum=μ, nesterov=True)`` (dampening 0) fed the natural gradient n."""
    out, old = {}, []
    for n, d in nat.items():
        if not mu.get(n):
            out[n] = d
        elif n not in buffers:
            buffers[n] = d.clone()
            out[n] = buffers[n]
        else:
            old.append(n)
    for m, names in _by_value(old, mu).items():
        b = [buffers[n] for n in names]
        torch._foreach_mul_(b, m)
        torch._foreach_add_(b, [nat[n] for n in names])
        out.update(zip(names, b))
    ahead = [n for n in nat if nesterov and nesterov.get(n) and mu.get(n)]
    for m, names in _by_value(ahead, mu).items():
        out.update(zip(names, torch._foreach_add([nat[n] for n in names], [buffers[n] for n in names], alpha=m)))
    return {n: out[n] for n in nat}


def scale(directions: dict, lr: dict) -> dict:
    """Δ = −lr · d per parameter."""
    out = {}
    for r, names in _by_value(list(directions), lr).items():
        out.update(zip(names, torch._foreach_mul([directions[n] for n in names], -r)))
    return {n: out[n] for n in directions}


def kl_clip(delta: dict, quad: float, bound: float | None) -> tuple[dict, float, float]:
    """Shrink Δ so that the model's quadratic KL ½ΔᵀF̂Δ is at most ``bound``: returns (Δ, ΔᵀF̂Δ, ν)."""
    if bound is None or 0.5 * quad <= bound:
        return delta, quad, 1.0
    nu = math.sqrt(bound / (0.5 * quad))
    return {n: d * nu for n, d in delta.items()}, quad * nu * nu, nu


def apply(params: dict, delta: dict) -> None:
    """θ ← θ + Δ in place."""
    with torch.no_grad():
        names = list(params)
        torch._foreach_add_([params[n] for n in names], [delta[n] for n in names])
