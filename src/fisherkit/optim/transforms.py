"""The small pieces a natural-gradient step is composed of, in the order ``NaturalGradient.step``
applies them (optax-style: each is a pure function with a one-step closed form):

    g ← g + η θ                         ``weight_decay``   (L2, before preconditioning)
    n = (F̂ + λI)⁻¹ g                    ``Preconditioner.compute``
    b ← μ b + n                          ``momentum``       (heavy ball on the natural gradient)
    Δ = −lr · b                          ``scale``
    Δ ← ν Δ, ν = min(1, √(κ / (½ΔᵀF̂Δ)))  ``kl_clip``        (trust region on the model's quadratic KL)
    λ ← LM(λ, ρ)                         ``damping.levenberg_marquardt`` (adaptive damping)
"""

from __future__ import annotations

import math

import torch


def weight_decay(grads: dict, params: dict, decay: dict) -> dict:
    """g + η θ per parameter (η = ``decay[name]``; parameters without a gradient are left alone)."""
    return {n: (g + decay[n] * params[n] if decay.get(n) and params[n].grad is not None else g)
            for n, g in grads.items()}


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
