"""Laplace posteriors, marginal likelihood, calibrated predictions and calibration metrics.

    la = fk.laplace.Laplace(model, "categorical", subset="last_layer", structure="kfac").fit((X, y))
    la.optimize_prior_precision("marglik")
    probs = la.predictive(X_test, method="probit")
    fk.laplace.metrics.summary(probs, y_test)   # accuracy, nll, brier, ece

See docs/laplace.md for the maths.
"""

from . import metrics
from .errors import LaplaceError, NotFittedError
from .laplace import Laplace
from .metrics import accuracy, auroc, brier, ece, entropy, nll, ood_auroc, reliability
from .predictive import monte_carlo, probit

load = Laplace.load

__all__ = ["Laplace", "LaplaceError", "NotFittedError", "metrics", "accuracy", "nll", "brier", "ece",
           "reliability", "entropy", "auroc", "ood_auroc", "probit", "monte_carlo", "load"]
