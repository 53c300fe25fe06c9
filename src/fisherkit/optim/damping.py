"""Damping of the curvature (argument checks live in ``fisherkit.choices``).

* Tikhonov: solve (F + λI) x = g instead of F x = g.
* Factored (π-) damping for a Kronecker block G ⊗ A (Martens & Grosse 2015, §6.3): instead of
  (G ⊗ A + λI)⁻¹, which has no Kronecker form, use (G + (√λ/π) I)⁻¹ ⊗ (A + π√λ I)⁻¹ with
  π = √((tr A / dim A) / (tr G / dim G)) — a solve option of the Kronecker block
  (``curvature.blocks.KronBlock.solve(..., pi_damping=True)``).
* Adaptive Levenberg–Marquardt (Martens & Grosse 2015, §6.5): with the quadratic model
  M(Δ) = gᵀΔ + ½ ΔᵀFΔ and the reduction ratio ρ = (L(θ+Δ) − L(θ)) / M(Δ), shrink λ by ω when
  ρ > ¾ (the model is trusted) and grow it by 1/ω when ρ < ¼.
"""

from __future__ import annotations

import math


def levenberg_marquardt(damping: float, rho: float, omega: float, lo: float = 1e-8, hi: float = 1e4) -> float:
    """New λ from the reduction ratio ρ: λω if ρ > ¾, λ/ω if ρ < ¼ (or ρ not finite), else λ."""
    if not math.isfinite(rho) or rho < 0.25:
        damping = damping / omega
    elif rho > 0.75:
        damping = damping * omega
    return float(min(max(damping, lo), hi))
