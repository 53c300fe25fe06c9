"""Input checks shared by the active-learning code: pools, batch sizes, label sets, model outputs."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from ..errors import FisherkitError, NonFiniteError, ShapeError


def model_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's first floating parameter (CPU float32 if none)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    return torch.device("cpu"), torch.float32


def as_pool(X, model: nn.Module | None = None, name: str = "pool") -> torch.Tensor:
    """``X`` as a non-empty, finite tensor on the model's device and dtype."""
    if isinstance(X, np.ndarray) or isinstance(X, (list, tuple)):
        X = torch.as_tensor(np.asarray(X, dtype=np.float64))
    if not isinstance(X, torch.Tensor):
        raise FisherkitError(f"the {name} must be a tensor or array of features; got {type(X).__name__}")
    if X.dim() == 0:
        raise ShapeError(f"the {name} must have a sample dimension first; got a scalar")
    if X.shape[0] == 0:
        raise FisherkitError(f"the {name} is empty: there is nothing to choose from")
    if X.is_floating_point() and not torch.isfinite(X).all():
        bad = (~torch.isfinite(X)).reshape(X.shape[0], -1).any(1).nonzero().flatten()
        raise NonFiniteError(
            f"the {name} has NaN or infinite features in {len(bad)} row(s), first at row {int(bad[0])}; "
            "impute or drop them first"
        )
    if model is not None:
        device, dtype = model_dtype(model)
        X = X.to(device=device, dtype=dtype if X.is_floating_point() else X.dtype)
    return X


def check_k(k, n_pool: int) -> int:
    """``k`` must be an integer with 1 ≤ k ≤ pool size."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise FisherkitError(f"k (points to select) must be an integer; got {k!r}")
    k = int(k)
    if k <= 0:
        raise FisherkitError(f"k (points to select) must be at least 1; got {k}")
    if k > n_pool:
        raise FisherkitError(f"k={k} is larger than the pool ({n_pool} unlabelled points)")
    return k


def check_indices(idx, n: int, name: str = "labelled set") -> np.ndarray:
    """Integer indices into a set of ``n`` points, in range and without duplicates."""
    arr = np.asarray(idx)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise FisherkitError(f"the {name} must be given as integer indices; got dtype {arr.dtype}")
    arr = arr.astype(np.int64).reshape(-1)
    bad = (arr < 0) | (arr >= n)
    if bad.any():
        raise FisherkitError(f"index {int(arr[bad][0])} in the {name} is out of range for {n} points")
    uniq, counts = np.unique(arr, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1]
        raise FisherkitError(
            f"the {name} has duplicate indices {dup[:5].tolist()}: each point can be labelled only once"
        )
    return arr


def check_outputs(out, likelihood_name: str) -> torch.Tensor:
    """Model outputs must be a finite ``[batch, classes]`` tensor (≥ 2 classes for categorical)."""
    if not isinstance(out, torch.Tensor):
        raise FisherkitError(f"the model returned a {type(out).__name__}; active learning needs a tensor of outputs")
    if out.dim() != 2:
        raise ShapeError(
            f"{likelihood_name} active learning needs model outputs of shape [batch, classes]; "
            f"got {tuple(out.shape)}"
        )
    if likelihood_name == "categorical" and out.shape[1] < 2:
        raise ShapeError(
            f"categorical likelihood needs at least 2 output logits per sample; the model gives {out.shape[1]} "
            "(for a single logit use likelihood='bernoulli')"
        )
    if not torch.isfinite(out).all():
        raise NonFiniteError("the model output is not finite on the pool")
    return out


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Put the model in eval mode for the block and restore every module's mode afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, t in modes:
            m.train(t)


def pool_arg(data, X_pool):
    """The pool passed as ``data`` (the API's name for the data an operation reads), or as the older
    keyword ``X_pool`` (accepted with a ``DeprecationWarning``)."""
    if X_pool is not None:
        if data is not None:
            raise FisherkitError("pass the pool once: as data (X_pool= is its older name)")
        import warnings

        warnings.warn("X_pool= is deprecated; pass the pool as data=", DeprecationWarning, stacklevel=3)
        return X_pool
    if data is None:
        raise FisherkitError("no pool given: pass the unlabelled inputs as data")
    return data
