"""Low-rank Fisher: the top-k eigenpairs, F ≈ U diag(λ) Uᵀ with U ∈ ℝ^{P×k} orthonormal.

Solving uses the Woodbury identity: (UΛUᵀ + δI)⁻¹ v = (v − UUᵀv)/δ + U diag(1/(λ+δ)) Uᵀ v.
"""

from __future__ import annotations

import math

import torch

from ..errors import FisherkitError
from .accumulator import LOCAL
from .base import Curvature
from .dense import DenseAccumulator
from .linalg import check_damping


class LowRankAccumulator(DenseAccumulator):
    """The dense Gram, then its top ``rank`` eigenpairs (``options["rank"]``). Models too large for
    the Gram go through Lanczos on the implicit operator instead (``fisherkit.api``)."""

    @classmethod
    def storage(cls, plan, options):
        """The dense Gram while it fits (``fisherkit.api`` switches to Lanczos otherwise) and the P × k eigenvectors."""
        k = min(int(options.get("rank", 20)), plan.info.size)
        return 2 * plan.info.size**2 + plan.info.size * k

    def finish(self, ops=LOCAL):
        k = min(int(self.meta.options.get("rank", 20)), self.info.size)
        vals, vecs = ops.top(self.matrix(), k)
        return LowRank(self.info, self.n, self.meta.kind, self.meta.likelihood, vals, vecs)


class LowRank(Curvature):
    structure = "lowrank"
    accumulator = LowRankAccumulator

    def __init__(self, info, num_samples, kind, likelihood, values: torch.Tensor, vectors: torch.Tensor):
        super().__init__(info, num_samples, kind, likelihood)
        order = torch.argsort(values, descending=True)
        self.values = values[order].clamp_min(0)
        self.vectors = vectors[:, order]

    @property
    def rank(self) -> int:
        return int(self.values.numel())

    @property
    def dtype(self):
        return self.values.dtype

    @property
    def device(self):
        return self.values.device

    def mv(self, v):
        v = self._check_vec(v)
        return self.vectors @ (self.values * (self.vectors.T @ v))

    def solve(self, v, damping=0.0):
        v = self._check_vec(v)
        lo = 0.0 if self.rank < self.info.size else float(self.values.min())
        check_damping(damping, lo, float(self.values.max()), f"rank-{self.rank} Fisher")
        c = self.vectors.T @ v
        out = self.vectors @ (c / (self.values + damping))
        if damping > 0:
            out = out + (v - self.vectors @ c) / damping
        return out

    def diag(self):
        return (self.vectors**2) @ self.values

    def trace(self):
        return self.values.sum()

    def frobenius_norm(self):
        return self.values.norm()

    def logdet(self, damping=0.0):
        lo = 0.0 if self.rank < self.info.size else float(self.values.min())
        check_damping(damping, lo, float(self.values.max()), f"rank-{self.rank} Fisher")
        rest = (self.info.size - self.rank) * math.log(damping) if self.rank < self.info.size else 0.0
        return torch.log(self.values + damping).sum() + rest

    def eig(self, k=None):
        k = self._k(k)
        if k > self.rank:
            raise FisherkitError(f"this low-rank Fisher keeps {self.rank} eigenpairs; asked for {k}")
        return self.values[:k], self.vectors[:, :k]

    def to_dense(self):
        return (self.vectors * self.values) @ self.vectors.T

    def __add__(self, other):
        self._check_like(other)
        b = torch.cat([self.vectors * self.values.sqrt(), other.vectors * other.values.sqrt()], 1)
        s, v = torch.linalg.eigh(b.T @ b)
        keep = s > s.max().clamp_min(1e-300) * 1e-12
        u = (b @ v[:, keep]) / s[keep].sqrt()
        res = LowRank(self.info, self.num_samples + other.num_samples, self.kind, self.likelihood, s[keep], u)
        return res

    def __mul__(self, a):
        if not isinstance(a, (int, float)) or not math.isfinite(a) or a < 0:
            raise FisherkitError(f"a low-rank Fisher can only be scaled by a finite number >= 0; got {a!r}")
        return LowRank(self.info, self.num_samples, self.kind, self.likelihood, a * self.values, self.vectors)

    __rmul__ = __mul__
