"""Diagonal Fisher: Fᵢᵢ = (1/N) Σₙ Σ_d gₙ,d,ᵢ²."""

from .base import BlockCurvature


class Diagonal(BlockCurvature):
    """The diagonal of F (one diagonal block over all parameters)."""

    structure = "diag"

    @property
    def values(self):
        return self.blocks[0].values
