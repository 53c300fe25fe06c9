"""Fisher-weighted model merging (Matena & Raffel 2022) and its baselines.

    merged = fk.merge.merge([net_a, net_b], data=[(Xa, ya), (Xb, yb)], structure="diag")

``merge`` returns a new model; ``merge_parameters`` the merged values; ``with_heads`` one copy per
model with that model's own head; ``tune`` the merge whose ε scores best on held-out data. Methods:
``fisher`` (diag / kfac / ekfac / block / dense / lowrank / implicit), ``average``,
``task_arithmetic``, ``regmean`` (the KFAC merge with G = I).
"""

from ._checks import ArchitectureError, MergeError
from .core import METHODS, fishers_for, merge, merge_parameters, with_heads
from .regmean import regmean
from .solve import fisher_weighted
from .tune import tune

__all__ = ["merge", "merge_parameters", "with_heads", "fishers_for", "fisher_weighted", "regmean", "tune", "METHODS",
           "MergeError", "ArchitectureError"]
