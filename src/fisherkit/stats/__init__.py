"""Classical statistics of Fisher information (no neural code).

Families with closed-form Fisher information (exponential families; and Logistic, StudentT,
Cauchy, Weibull, where observed and expected information differ at the MLE), a generic autodiff
Fisher information for any family (heavy tails included), maximum likelihood with
expected/observed/OPG/sandwich covariances, Wald and profile intervals, and GLMs fitted by
Fisher scoring.

>>> import fisherkit as fk
>>> res = fk.stats.fit(fk.stats.Binomial(10), [6])
>>> float(res.params[0])
0.6
"""

from .families import Bernoulli, Beta, Binomial, Categorical, Exponential, Gamma, Geometric, Multinomial, Normal, Poisson
from .nonexponential import Cauchy, Logistic, StudentT, Weibull
from .family import Family, Support
from .custom import CustomFamily
from .information import cramer_rao_bound, fisher_information, score_and_hessian
from .mle import BoundaryWarning, FitResult, fit
from .glm import CollinearityError, LogisticRegression, PoissonRegression, SeparationError

__all__ = [
    "Bernoulli",
    "Beta",
    "Binomial",
    "Categorical",
    "Exponential",
    "Gamma",
    "Geometric",
    "Multinomial",
    "Normal",
    "Poisson",
    "Logistic",
    "StudentT",
    "Cauchy",
    "Weibull",
    "Family",
    "Support",
    "CustomFamily",
    "fisher_information",
    "cramer_rao_bound",
    "score_and_hessian",
    "fit",
    "FitResult",
    "BoundaryWarning",
    "LogisticRegression",
    "PoissonRegression",
    "SeparationError",
    "CollinearityError",
    "plots",
]


def __getattr__(name):  # import matplotlib only when plots are asked for
    if name == "plots":
        import importlib

        return importlib.import_module(".plots", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
