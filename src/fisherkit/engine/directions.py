"""Output-space backward directions V[d] for each kind of Fisher.

For a batch with outputs f of shape ``[B, *E, C]`` the directions have shape ``[D, B, *E, C]`` and
the Fisher of sample n is Σ_d (Jₙᵀ V[d, n])(Jₙᵀ V[d, n])ᵀ:

* ``exact``: the columns of S with Λ = S Sᵀ, one per output position and class (D = |E|·K);
* ``mc``: V[m] = ∂nll(f, yₘ)/∂f / √M with yₘ ~ p(y | f), M = ``mc_samples``;
* ``empirical``: V[0] = ∂nll(f, y)/∂f at the observed labels y.
"""

from __future__ import annotations

import math

import torch

from ..errors import FisherkitError
from ..likelihoods import Likelihood

def exact_directions(lik: Likelihood, f: torch.Tensor) -> torch.Tensor:
    s = lik.sqrt_fisher(f)  # [B, *E, C, K]
    b, c, k = s.shape[0], s.shape[-2], s.shape[-1]
    extra = s.shape[1:-2]
    e = math.prod(extra)
    s = s.reshape(b, e, c, k)
    if e == 1:
        return s.permute(3, 0, 1, 2).reshape(k, b, *extra, c)
    v = s.new_zeros(e, k, b, e, c)
    idx = torch.arange(e, device=s.device)
    v[idx, :, :, idx, :] = s.permute(1, 3, 0, 2)
    return v.reshape(e * k, b, *extra, c)


def directions(
    lik: Likelihood,
    f: torch.Tensor,
    y: torch.Tensor | None,
    kind: str,
    mc_samples: int = 1,
    generator: torch.Generator | None = None,
    batch: int | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Backward directions ``[D, B, *E, C]`` for one batch (detached).

    ``mask`` ``[B, *E]`` (True = counted): directions at other positions are zero, so those
    positions (labels ``ignore_index``) are left out of every kind.
    """
    v = _directions(lik, f.detach(), y, kind, mc_samples, generator, batch)
    if mask is not None:
        v = v * mask.unsqueeze(0).unsqueeze(-1).to(v.dtype)
    return v


def _directions(lik, f, y, kind, mc_samples, generator, batch):
    if kind == "exact":
        return exact_directions(lik, f)
    if kind == "mc":
        if mc_samples == 1:
            return lik.residual(f, lik.sample(f, generator)).unsqueeze(0)
        ys = [lik.sample(f, generator) for _ in range(mc_samples)]
        return torch.stack([lik.residual(f, yy) for yy in ys]) / math.sqrt(mc_samples)
    if y is None:
        raise FisherkitError(f"kind='empirical' needs labels, but batch {batch} has none")
    lik.check(f, y, batch)
    return lik.residual(f, y).unsqueeze(0)
