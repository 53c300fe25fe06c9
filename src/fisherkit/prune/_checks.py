"""Input checks for pruning: raised before any Fisher pass or any copy of the model."""

from __future__ import annotations

import math

from torch import nn

from ..errors import FisherkitError

METHODS = ("magnitude", "obd", "woodfisher", "kfac")
SCOPES = ("global", "layer")
PRUNABLE_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d)


class PruneError(FisherkitError):
    """A bad pruning request: sparsity out of range, unknown method, a parameter that cannot be pruned."""


def check_sparsity(s) -> float:
    try:
        v = float(s)
    except (TypeError, ValueError):
        raise PruneError(f"sparsity must be a number in [0, 1); got {s!r}") from None
    if not math.isfinite(v) or not 0 <= v < 1:
        raise PruneError(f"sparsity must lie in [0, 1) (the fraction of weights set to zero); got {s!r}")
    return v


def check_positive_int(x, what: str) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or x < 1:
        raise PruneError(f"{what} must be an integer ≥ 1; got {x!r}")
    return x


def check_damping(x) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise PruneError(f"damping must be a number ≥ 0; got {x!r}") from None
    if not math.isfinite(v) or v < 0:
        raise PruneError(f"damping must be a finite number ≥ 0; got {x!r}")
    return v


def prunable_weights(model: nn.Module, params=None) -> list[str]:
    """Names of the weights to prune: every Linear/Conv weight (default), or the given names."""
    owners = {}
    for mname, mod in model.named_modules():
        if isinstance(mod, PRUNABLE_MODULES):
            owners[f"{mname}.weight" if mname else "weight"] = mod
    named = dict(model.named_parameters())
    if params is None:
        names = [n for n in named if n in owners and named[n].requires_grad]
        if not names:
            raise PruneError("the model has no trainable Linear / Conv1d / Conv2d weight to prune")
        return names
    if isinstance(params, str):
        params = [params]
    out = []
    for p in params:
        if p not in named:
            raise PruneError(f"params: {p!r} is not a parameter of the model (it has {list(named)[:6]}...)")
        if p not in owners:
            raise PruneError(f"params: {p!r} is not the weight of a Linear / Conv1d / Conv2d layer; only those "
                             "are pruned (biases are kept)")
        if p not in out:
            out.append(p)
    if not out:
        raise PruneError("params is empty; name at least one weight to prune")
    return out
