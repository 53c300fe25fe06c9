"""Continual-learning metrics from the accuracy matrix.

R[i][j] is the test accuracy on task j after training on tasks 0..i (T tasks; entries above the
diagonal, tasks not yet seen, are NaN and never used):

* average accuracy after task i:  ACC_i = (1/(i+1)) Σ_{j≤i} R[i][j];  ACC = ACC_{T−1}.
* backward transfer (Lopez-Paz & Ranzato 2017):  BWT = 1/(T−1) Σ_{j<T−1} (R[T−1][j] − R[j][j]);
  negative = forgetting, positive = later tasks helped earlier ones.
* forgetting (Chaudhry et al. 2018):  F = 1/(T−1) Σ_{j<T−1} max_{j≤l<T−1} (R[l][j] − R[T−1][j]),
  the drop from the best accuracy a task ever had (after it was learnt) to its final accuracy.
"""

from __future__ import annotations

import numpy as np

from ..errors import FisherkitError


def _matrix(R) -> np.ndarray:
    R = np.asarray(R, dtype=float)
    if R.ndim != 2 or R.shape[0] != R.shape[1] or R.shape[0] == 0:
        raise FisherkitError(f"an accuracy matrix must be square T×T with T ≥ 1; got shape {R.shape}")
    low = R[np.tril_indices(R.shape[0])]
    if not np.all(np.isfinite(low)):
        raise FisherkitError("the accuracy matrix has non-finite entries on or below the diagonal")
    return R


def average_accuracy(R, after: int | None = None) -> float:
    """ACC_i = mean_{j≤i} R[i][j] (default: after the last task)."""
    R = _matrix(R)
    i = R.shape[0] - 1 if after is None else after
    if not 0 <= i < R.shape[0]:
        raise FisherkitError(f"after must be a task index in [0, {R.shape[0] - 1}]; got {after!r}")
    return float(R[i, : i + 1].mean())


def average_accuracy_curve(R) -> np.ndarray:
    """[ACC_0, ..., ACC_{T−1}]: the average accuracy over the tasks seen so far, after each task."""
    R = _matrix(R)
    return np.array([R[i, : i + 1].mean() for i in range(R.shape[0])])


def backward_transfer(R) -> float:
    """BWT = 1/(T−1) Σ_{j<T−1} (R[T−1][j] − R[j][j]); 0 for a single task."""
    R = _matrix(R)
    T = R.shape[0]
    if T == 1:
        return 0.0
    return float(np.mean([R[T - 1, j] - R[j, j] for j in range(T - 1)]))


def forgetting(R) -> float:
    """F = 1/(T−1) Σ_{j<T−1} max_{j≤l<T−1} (R[l][j] − R[T−1][j]); 0 for a single task."""
    R = _matrix(R)
    T = R.shape[0]
    if T == 1:
        return 0.0
    return float(np.mean([R[j : T - 1, j].max() - R[T - 1, j] for j in range(T - 1)]))


def accuracy_matrix_summary(R) -> dict[str, float]:
    """{"acc", "bwt", "forgetting"} of one accuracy matrix (fractions, not percent)."""
    return {"acc": average_accuracy(R), "bwt": backward_transfer(R), "forgetting": forgetting(R)}
