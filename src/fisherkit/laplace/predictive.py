"""Turning a Gaussian over outputs, f ~ N(f̂, V), into predictive probabilities.

The linearised (GLM) predictive: f(x; θ) ≈ f(x; θ̂) + J(x)(θ − θ̂) with θ ~ N(θ̂, Λ⁻¹) gives
f ~ N(f̂, J Λ⁻¹ Jᵀ). Then p(y | x) = E_f[softmax(f)] is approximated by

* ``probit``: the probit approximation of the sigmoid, extended to the softmax (MacKay 1992;
  Daxberger et al. 2021): softmax(f̂_c / √(1 + π/8 · V_cc)); for a Bernoulli output
  σ(f̂ / √(1 + π/8 · V)). Deterministic, cheap, and leaves the arg-max of f̂ unchanged.
* ``mc``: the mean of softmax over S samples f = f̂ + V^{1/2} ε (seeded by ``generator``).
"""

from __future__ import annotations

import math

import torch


def probit(f: torch.Tensor, fvar: torch.Tensor, likelihood: str) -> torch.Tensor:
    """Probit-approximated predictive: f [B, C], fvar [B, C, C] or its diagonal [B, C] → probabilities [B, C]."""
    v = fvar.diagonal(dim1=1, dim2=2) if fvar.dim() == 3 else fvar
    kappa = 1.0 / torch.sqrt(1.0 + math.pi / 8.0 * v)
    if likelihood == "bernoulli":
        return torch.sigmoid(kappa * f)
    return torch.softmax(kappa * f, -1)


def psd_sqrt(fvar: torch.Tensor) -> torch.Tensor:
    """A square root R with R Rᵀ = fvar for a batch of PSD matrices (eigen, robust to singular ones)."""
    w, q = torch.linalg.eigh(fvar)
    return q * w.clamp_min(0).sqrt().unsqueeze(-2)


def monte_carlo(f: torch.Tensor, fvar: torch.Tensor, likelihood: str, n_samples: int, generator=None) -> torch.Tensor:
    """Mean of softmax (sigmoid for Bernoulli) over ``n_samples`` draws f ~ N(f̂, fvar)."""
    R = psd_sqrt(fvar)
    eps = torch.randn((n_samples,) + tuple(f.shape), generator=generator, dtype=f.dtype, device=f.device)
    draws = f.unsqueeze(0) + torch.einsum("bcd,sbd->sbc", R, eps)
    link = torch.sigmoid if likelihood == "bernoulli" else (lambda z: torch.softmax(z, -1))
    return link(draws).mean(0)


def link(f: torch.Tensor, likelihood: str) -> torch.Tensor:
    """The MAP predictive: softmax / sigmoid of the outputs (identity for a Gaussian)."""
    if likelihood == "categorical":
        return torch.softmax(f, -1)
    if likelihood == "bernoulli":
        return torch.sigmoid(f)
    return f
