"""fisherkit: Fisher information made practical.

Top-level names: ``fisher``, ``fvp``, ``kl_divergence``, ``load``, the likelihoods, and the
subpackages ``stats``, ``optim``, ``continual``, ``active``.
"""

from ._version import __version__
from .errors import FisherkitError
from . import stats

__all__ = ["__version__", "FisherkitError", "stats"]
