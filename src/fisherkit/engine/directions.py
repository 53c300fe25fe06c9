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


class ExactDirections:
    """The exact kind's directions ``[E·K, B, *E, C]`` built a chunk at a time (``[a:b]``): direction
    d = e·K + j is column j of S at position e and zero elsewhere, so the whole tensor (E² large for
    sequences: 12,416 × 128 × 97 floats for one GPT-2-style sequence) is never materialised; only the
    chunks ``collect.gather`` sends through the backward, sized to ``max_memory``."""

    def __init__(self, lik: Likelihood, f: torch.Tensor, mask: torch.Tensor | None = None):
        s = lik.sqrt_fisher(f)  # [B, *E, C, K]
        self.b, self.c, self.k = s.shape[0], s.shape[-2], s.shape[-1]
        self.extra = tuple(s.shape[1:-2])
        self.e = math.prod(self.extra)
        self.s = s.reshape(self.b, self.e, self.c, self.k)
        if mask is not None:
            self.s = self.s * mask.reshape(self.b, self.e, 1, 1).to(self.s.dtype)
        self.shape = (self.e * self.k, self.b, *self.extra, self.c)
        self.dtype = s.dtype

    def element_size(self) -> int:
        return self.s.element_size()

    def __getitem__(self, sl: slice) -> torch.Tensor:
        idx = torch.arange(self.shape[0], device=self.s.device)[sl]
        pos, col = idx // self.k, idx % self.k
        v = self.s.new_zeros(len(idx), self.b, self.e, self.c)
        v[torch.arange(len(idx), device=idx.device), :, pos, :] = self.s[:, pos, :, col]  # both [n, B, C]
        return v.reshape(len(idx), self.b, *self.extra, self.c)


def directions(
    lik: Likelihood,
    f: torch.Tensor,
    y: torch.Tensor | None,
    kind: str,
    mc_samples: int = 1,
    generator: torch.Generator | None = None,
    batch: int | None = None,
    mask: torch.Tensor | None = None,
    lazy: bool = False,
) -> torch.Tensor:
    """Backward directions ``[D, B, *E, C]`` for one batch (detached).

    ``mask`` ``[B, *E]`` (True = counted): directions at other positions are zero, so those
    positions (labels ``ignore_index``) are left out of every kind. ``lazy``: the exact kind with
    output positions (E > 1) as an ``ExactDirections`` that builds chunks on demand.
    """
    if lazy and kind == "exact":
        d = ExactDirections(lik, f.detach(), mask)
        if d.e > 1:
            return d
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
