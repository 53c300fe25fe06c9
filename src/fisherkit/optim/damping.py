"""Damping of the curvature and validation of the optimizer's hyper-parameters.

* Tikhonov: solve (F + λI) x = g instead of F x = g.
* Factored (π-) damping for a Kronecker block G ⊗ A (Martens & Grosse 2015, §6.3): instead of
  (G ⊗ A + λI)⁻¹, which has no Kronecker form, use (G + (√λ/π) I)⁻¹ ⊗ (A + π√λ I)⁻¹ with
  π = √((tr A / dim A) / (tr G / dim G)), the choice that minimises the norm of the cross terms.
* Adaptive Levenberg–Marquardt (Martens & Grosse 2015, §6.5): with the quadratic model
  M(Δ) = gᵀΔ + ½ ΔᵀFΔ and the reduction ratio ρ = (L(θ+Δ) − L(θ)) / M(Δ), shrink λ by ω when
  ρ > ¾ (the model is trusted) and grow it by 1/ω when ρ < ¼.
"""

from __future__ import annotations

import math

import torch


def pi_factor(A: torch.Tensor, G: torch.Tensor) -> float:
    """π = √((tr A / dim A) / (tr G / dim G)) (1 when either trace is 0)."""
    ta = float(A.diagonal().mean())
    tg = float(G.diagonal().mean())
    if ta <= 0 or tg <= 0 or not math.isfinite(ta) or not math.isfinite(tg):
        return 1.0
    return math.sqrt(ta / tg)


def kron_damped_inverse(M: torch.Tensor, la, qa, lg, qg, damping: float, pi_damping: bool, pi: float) -> torch.Tensor:
    """Apply a damped inverse of G ⊗ A to the layer matrix M (``O × I``) through the eigenbases.

    pi_damping: (G + γ_G I)⁻¹ M (A + γ_A I)⁻¹ with γ_A = π√λ, γ_G = √λ/π.
    otherwise: exact Tikhonov, Q_G [(Q_Gᵀ M Q_A) / (λ_G λ_Aᵀ + λ)] Q_Aᵀ.
    """
    m = qg.T @ M @ qa
    if pi_damping:
        root = math.sqrt(damping)
        m = m / ((lg + root / pi)[:, None] * (la + root * pi)[None, :])
    else:
        m = m / (lg[:, None] * la[None, :] + damping)
    return qg @ m @ qa.T


def levenberg_marquardt(damping: float, rho: float, omega: float, lo: float = 1e-8, hi: float = 1e4) -> float:
    """New λ from the reduction ratio ρ: λω if ρ > ¾, λ/ω if ρ < ¼ (or ρ not finite), else λ."""
    if not math.isfinite(rho) or rho < 0.25:
        damping = damping / omega
    elif rho > 0.75:
        damping = damping * omega
    return float(min(max(damping, lo), hi))
