"""The small pieces a natural-gradient step is composed of, in the order ``NaturalGradient.step``
applies them (optax-style: each is a pure function with a one-step closed form):

    g ← g + η θ                         ``weight_decay``   (L2, before preconditioning)
    n = (F̂ + λI)⁻¹ g                    ``Preconditioner.compute``
    n ← n · ‖a‖/‖n‖ per tensor           ``graft``          (step length of Adam (a = g/(√v̂+ε)) or SGD (a = g))
    b ← μ b + n                          ``momentum``       (heavy ball on the natural gradient)
    Δ = −lr · b                          ``scale``
    Δ ← ν Δ, ν = min(1, √(κ / (½ΔᵀF̂Δ)))  ``kl_clip``        (trust region on the model's quadratic KL)
    Δ ← ν Δ until KL_batch(θ, θ+Δ) ≤ κ   ``NaturalGradient._clip_measured`` (trust region on the KL moved)
    λ ← LM(λ, ρ)                         ``damping.levenberg_marquardt`` (adaptive damping)
"""

from __future__ import annotations

import math

import torch


def weight_decay(grads: dict, params: dict, decay: dict) -> dict:
    """g + η θ per parameter (η = ``decay[name]``; parameters without a gradient are left alone)."""
    return {n: (g + decay[n] * params[n] if decay.get(n) and params[n].grad is not None else g)
            for n, g in grads.items()}


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
    d, g = [nat[n] for n in names], [grads[n] for n in names]
    if kind == "adam":  # one foreach op per stage instead of a few small kernels per tensor
        for n in names:
            if n not in second_moment:
                second_moment[n] = torch.zeros_like(grads[n])
        v = [second_moment[n] for n in names]
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, g, g, value=1 - beta2)
        a = torch._foreach_add(torch._foreach_sqrt(torch._foreach_div(v, 1 - beta2 ** step)), eps)
        a = torch._foreach_div(g, a)
    else:
        a = g
    ratio = [torch.where(dn > 0, an / dn.clamp_min(torch.finfo(dn.dtype).tiny), torch.zeros_like(dn))
             for an, dn in zip(torch._foreach_norm(a), torch._foreach_norm(d))]
    return dict(zip(names, torch._foreach_mul(d, ratio)))


def momentum(buffers: dict, nat: dict, mu: dict) -> dict:
    """Heavy ball: b ← μ b + n (b starts at n), in place in ``buffers``; returns the directions b (or n where μ = 0)."""
    out = {}
    for n, d in nat.items():
        if not mu.get(n):
            out[n] = d
        elif n not in buffers:
            buffers[n] = d.clone()
            out[n] = buffers[n]
        else:
            out[n] = buffers[n].mul_(mu[n]).add_(d)
    return out


def scale(directions: dict, lr: dict) -> dict:
    """Δ = −lr · d per parameter."""
    return {n: -lr[n] * d for n, d in directions.items()}


def kl_clip(delta: dict, quad: float, bound: float | None) -> tuple[dict, float, float]:
    """Shrink Δ so that the model's quadratic KL ½ΔᵀF̂Δ is at most ``bound``: returns (Δ, ΔᵀF̂Δ, ν)."""
    if bound is None or 0.5 * quad <= bound:
        return delta, quad, 1.0
    nu = math.sqrt(bound / (0.5 * quad))
    return {n: d * nu for n, d in delta.items()}, quad * nu * nu, nu


def apply(params: dict, delta: dict) -> None:
    """θ ← θ + Δ in place."""
    with torch.no_grad():
        for n, p in params.items():
            p.add_(delta[n])
