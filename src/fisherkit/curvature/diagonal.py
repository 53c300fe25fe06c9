"""Diagonal Fisher: Fᵢᵢ = (1/N) Σₙ Σ_d gₙ,d,ᵢ²."""

from __future__ import annotations

from ..engine import accumulate as acc
from .accumulator import LOCAL, Accumulator
from .base import BlockCurvature
from .blocks import DiagBlock


class DiagonalAccumulator(Accumulator):
    """Σₙ Σ_d g² per parameter; for hooked layers as one combined ``[O, I]`` matrix per layer
    ((Σ_d g_d²)ᵀ ã² when positions are not shared: no per-sample gradients)."""

    def _add(self, bs):
        acc.diag_add(bs, self._sums)

    def finish(self, ops=LOCAL):
        vals = acc.flat_diag(self.plan.hook_units, self._taken(), self.info, self.n)
        return Diagonal(self.info, self.n, self.meta.kind, self.meta.likelihood,
                        [DiagBlock(self.info.names, self.info.numels, vals)])


class Diagonal(BlockCurvature):
    """The diagonal of F (one diagonal block over all parameters)."""

    structure = "diag"
    accumulator = DiagonalAccumulator

    @property
    def values(self):
        return self.blocks[0].values
