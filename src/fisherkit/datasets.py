"""Bundled data as tensors (scikit-learn's built-in data sets) and seeded synthetic data.

Nothing is downloaded: ``digits`` (1,797 × 64, 10 classes), ``breast_cancer`` (569 × 30, 2),
``wine`` (178 × 13, 3) and ``iris`` (150 × 4, 3) ship inside scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import FisherkitError

_LOADERS = {
    "digits": "load_digits",
    "breast_cancer": "load_breast_cancer",
    "wine": "load_wine",
    "iris": "load_iris",
}


@dataclass
class Split:
    """Train/test tensors of a classification data set."""

    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int
    name: str

    @property
    def n_features(self) -> int:
        return int(self.X_train.shape[1])


def load_arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Raw features and integer labels of a bundled data set."""
    if name not in _LOADERS:
        raise FisherkitError(f"unknown data set {name!r}; bundled ones are {sorted(_LOADERS)}")
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, _LOADERS[name])()
    return np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target, dtype=np.int64)


def load(
    name: str = "digits",
    test_size: float = 0.25,
    seed: int = 0,
    standardize: bool = True,
    dtype: torch.dtype = torch.float32,
) -> Split:
    """A stratified, seeded train/test split as tensors; features standardised with train statistics.

    Digits pixels (0..16) are scaled to [0, 1] instead of standardised when ``standardize="unit"``.
    """
    from sklearn.model_selection import train_test_split

    X, y = load_arrays(name)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=test_size, random_state=seed, stratify=y)
    if standardize == "unit":
        scale = X.max() if X.max() > 0 else 1.0
        Xtr, Xte = Xtr / scale, Xte / scale
    elif standardize:
        mu, sd = Xtr.mean(0), Xtr.std(0)
        sd[sd == 0] = 1.0
        Xtr, Xte = (Xtr - mu) / sd, (Xte - mu) / sd
    t = lambda a: torch.as_tensor(a, dtype=dtype)  # noqa: E731
    return Split(t(Xtr), torch.as_tensor(ytr), t(Xte), torch.as_tensor(yte), int(y.max()) + 1, name)


def gaussian_classification(
    n: int, d: int, n_classes: int, seed: int = 0, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded synthetic inputs X ~ N(0, I) with labels from a random linear teacher."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=dtype)
    W = torch.randn(d, n_classes, generator=g, dtype=dtype) / d**0.5
    y = (X @ W + 0.5 * torch.randn(n, n_classes, generator=g, dtype=dtype)).argmax(1)
    return X, y
