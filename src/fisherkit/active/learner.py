"""``ActiveLearner``: active learning around a model you bring, with a scikit-learn feel.

    learner = ActiveLearner(model, strategy=EGL(), X_pool=X_unlabelled)
    learner.fit(X_seed, y_seed)                 # trains the model (your fit_fn or full-batch Adam)
    idx = learner.query(10)                     # pool indices to label next
    learner.teach(indices=idx, y=oracle(idx))   # adds them and retrains
    learner.score(X_test, y_test)
"""

from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..errors import FisherkitError, ShapeError
from ._checks import as_pool, check_indices, check_k, eval_mode
from .loop import make_strategy, train_classifier
from .strategies import Strategy, predict_proba


class ActiveLearner:
    """A model, a query strategy, a labelled set and (optionally) the pool it is drawn from.

    ``fit_fn(model, X, y)`` trains the model in place (default: ``train_classifier``, full-batch Adam
    for ``epochs`` steps). With ``warm_start=False`` (default) every fit starts from the initial
    weights, so a round's model depends only on the labelled set. Fitted attributes: ``X_``, ``y_``
    (the labelled set), ``labelled_`` (pool indices taught so far).
    """

    def __init__(self, model: nn.Module, strategy: Strategy | str = "egl", X_pool=None,
                 fit_fn: Callable | None = None, epochs: int = 100, lr: float = 1e-2, weight_decay: float = 1e-4,
                 warm_start: bool = False, seed: int = 0):
        if not isinstance(model, nn.Module):
            raise FisherkitError(f"ActiveLearner needs a torch.nn.Module; got {type(model).__name__}")
        self.model = model
        self.strategy = make_strategy(strategy, seed) if isinstance(strategy, str) else strategy
        if not isinstance(self.strategy, Strategy):
            raise FisherkitError(f"strategy must be a fisherkit.active Strategy or its name; got {type(strategy).__name__}")
        self.X_pool = None if X_pool is None else as_pool(X_pool, model)
        self.fit_fn, self.epochs, self.lr, self.weight_decay = fit_fn, epochs, lr, weight_decay
        self.warm_start = warm_start
        self._init_state = copy.deepcopy(model.state_dict())
        self.X_, self.y_ = None, None
        self.labelled_ = np.zeros(0, dtype=np.int64)

    def fit(self, X, y) -> "ActiveLearner":
        """Train on (X, y), which becomes the labelled set. Returns self."""
        X = as_pool(X, self.model, "labelled set")
        y = torch.as_tensor(y).long().to(X.device)
        if y.shape != (X.shape[0],):
            raise ShapeError(f"labels of shape {tuple(y.shape)} do not fit {X.shape[0]} labelled points")
        self.X_, self.y_ = X, y
        if not self.warm_start:
            self.model.load_state_dict(self._init_state)
        if self.fit_fn is not None:
            self.fit_fn(self.model, X, y)
        else:
            train_classifier(self.model, X, y, self.epochs, self.lr, self.weight_decay)
        return self

    def _unlabelled(self) -> np.ndarray:
        mask = np.ones(self.X_pool.shape[0], bool)
        mask[self.labelled_] = False
        return np.nonzero(mask)[0]

    def query(self, k: int, X_pool=None) -> np.ndarray:
        """Indices of the k points to label next: into ``X_pool`` if given, else into the stored pool
        (points already taught are skipped)."""
        if X_pool is not None:
            X = as_pool(X_pool, self.model)
            check_k(k, X.shape[0])
            return self.strategy.select(self.model, X, k, X_labeled=self.X_).cpu().numpy()
        if self.X_pool is None:
            raise FisherkitError("no pool: pass X_pool to query() or to ActiveLearner(...)")
        free = self._unlabelled()
        if len(free) == 0:
            raise FisherkitError("the pool is empty: every point has been labelled")
        check_k(k, len(free))
        pick = self.strategy.select(self.model, self.X_pool[free], k, X_labeled=self.X_)
        return free[pick.cpu().numpy()]

    def teach(self, X=None, y=None, indices=None) -> "ActiveLearner":
        """Add labelled points — features ``X`` or stored-pool ``indices`` — with labels ``y``, and refit."""
        if y is None or (X is None) == (indices is None):
            raise FisherkitError("teach() needs labels y and exactly one of X (features) or indices (into the pool)")
        if indices is not None:
            if self.X_pool is None:
                raise FisherkitError("teach(indices=...) needs a pool: pass X_pool to ActiveLearner(...)")
            idx = check_indices(indices, self.X_pool.shape[0], "indices to teach")
            again = np.intersect1d(idx, self.labelled_)
            if len(again):
                raise FisherkitError(f"pool points {again[:5].tolist()} are already labelled: each point can be labelled once")
            X = self.X_pool[idx]
            self.labelled_ = np.concatenate([self.labelled_, idx])
        X = as_pool(X, self.model, "new labelled points")
        y = torch.as_tensor(y).long().to(X.device).reshape(-1)
        if y.shape[0] != X.shape[0]:
            raise ShapeError(f"{y.shape[0]} labels for {X.shape[0]} new points")
        if self.X_ is None:
            return self.fit(X, y)
        return self.fit(torch.cat([self.X_, X]), torch.cat([self.y_, y]))

    def predict_proba(self, X) -> torch.Tensor:
        return predict_proba(self.model, as_pool(X, self.model, "inputs"))

    def predict(self, X) -> torch.Tensor:
        return self.predict_proba(X).argmax(-1)

    @torch.no_grad()
    def score(self, X, y) -> float:
        """Accuracy on (X, y)."""
        with eval_mode(self.model):
            return float((self.predict(X).cpu() == torch.as_tensor(y).cpu()).double().mean())
