"""fisherkit: Fisher information made practical.

Top-level names: ``fisher``, ``fvp``, ``kl_divergence``, ``load``, ``memory_estimate``, the likelihoods, and the
subpackages ``stats``, ``optim``, ``continual``, ``active``.
"""

from ._version import __version__
from .api import fisher, fvp, kl_divergence, load, memory_estimate
from .errors import FisherkitError
from .likelihoods import Bernoulli, Categorical, Gaussian, Likelihood
from .curvature import Curvature

_SUBPACKAGES = {"stats", "optim", "continual", "active", "datasets", "report"}
_SUBPACKAGES |= {"merge", "prune"}  # fk.merge (model merging), fk.prune (OBS pruning)
_SUBPACKAGES |= {"laplace"}  # fk.laplace (Laplace posteriors, calibrated predictions), loaded on first use


def __getattr__(name):  # subpackages load on first use: `import fisherkit` stays light
    if name in _SUBPACKAGES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'fisherkit' has no attribute {name!r}")

__all__ = [
    "__version__", "FisherkitError", "fisher", "fvp", "kl_divergence", "load", "memory_estimate", "Likelihood",
    "Categorical",
    "Gaussian", "Bernoulli", "Curvature", "stats",
]
