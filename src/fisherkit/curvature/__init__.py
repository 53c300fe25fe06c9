"""Fisher structures behind one interface (``Curvature``): one file each, plus io."""

from .base import BlockCurvature, Curvature
from .block import BlockDiagonal
from .dense import Dense
from .diagonal import Diagonal
from .ekfac import EKFAC
from .implicit import Implicit
from .kfac import KFAC
from .lowrank import LowRank

STRUCTURES = {
    "dense": Dense,
    "diag": Diagonal,
    "block": BlockDiagonal,
    "kfac": KFAC,
    "ekfac": EKFAC,
    "lowrank": LowRank,
    "implicit": Implicit,
}

__all__ = ["Curvature", "BlockCurvature", "Dense", "Diagonal", "BlockDiagonal", "KFAC", "EKFAC", "LowRank",
           "Implicit", "STRUCTURES"]
