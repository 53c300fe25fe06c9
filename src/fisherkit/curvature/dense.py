"""Dense Fisher: the full P × P matrix F = (1/N) Σₙ Σ_d gₙ,d gₙ,dᵀ (small models only)."""

from .base import BlockCurvature


class Dense(BlockCurvature):
    """One dense block over all parameters; exact for every operation."""

    structure = "dense"

    @property
    def matrix(self):
        return self.blocks[0].matrix
