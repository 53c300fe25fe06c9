"""Natural-gradient optimisation: ``NaturalGradient`` (a torch optimizer) and ``Preconditioner``.

See docs/natural_gradient.md for the maths, the options and the measured comparison with SGD and Adam.
"""

from .eigen_adam import KFACEigenAdam
from .natural_gradient import NaturalGradient
from .preconditioner import Preconditioner

__all__ = ["KFACEigenAdam", "NaturalGradient", "Preconditioner"]
