"""Block-diagonal Fisher: a dense block per layer (the weight and bias of one module together)."""

from .base import BlockCurvature


class BlockDiagonal(BlockCurvature):
    """Dense per layer, zero between layers; blocks too large for dense storage are diagonal."""

    structure = "block"
