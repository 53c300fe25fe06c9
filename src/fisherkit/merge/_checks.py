"""Input checks for merging: raised before any Fisher pass or any copy of a model."""

from __future__ import annotations

import math

import torch

from ..errors import FisherkitError


class MergeError(FisherkitError):
    """Models, weights, data or Fishers that cannot be merged together."""


class ArchitectureError(MergeError):
    """The models do not have the same parameters (names and shapes)."""


def check_models(models) -> list[torch.nn.Module]:
    """At least one model; all with identical trainable parameter names, shapes, dtypes and devices."""
    if isinstance(models, torch.nn.Module) or not hasattr(models, "__len__"):
        raise MergeError("models must be a list of torch.nn.Module (the models to merge)")
    models = list(models)
    if not models:
        raise MergeError("models is empty; pass at least one model")
    for i, m in enumerate(models):
        if not isinstance(m, torch.nn.Module):
            raise MergeError(f"models[{i}] is a {type(m).__name__}, not a torch.nn.Module")
    ref = {n: (tuple(p.shape), p.dtype, p.device) for n, p in models[0].named_parameters()}
    for i, m in enumerate(models[1:], 1):
        have = {n: (tuple(p.shape), p.dtype, p.device) for n, p in m.named_parameters()}
        problems = [f"{n} is missing" for n in ref if n not in have]
        problems += [f"{n} is extra" for n in have if n not in ref]
        problems += [f"{n} is {have[n][0]} {have[n][1]} on {have[n][2]} but {ref[n][0]} {ref[n][1]} on {ref[n][2]} "
                     "in models[0]" for n in ref if n in have and have[n] != ref[n]]
        if problems:
            raise ArchitectureError(f"models[{i}] has another architecture than models[0]: " + "; ".join(problems[:8]))
    return models


def check_weights(weights, k: int) -> list[float]:
    """Per-model weights λᵢ ≥ 0, not all zero (default 1/k each)."""
    if weights is None:
        return [1.0 / k] * k
    try:
        w = [float(x) for x in weights]
    except (TypeError, ValueError):
        raise MergeError(f"weights must be a list of {k} numbers; got {weights!r}") from None
    if len(w) != k:
        raise MergeError(f"weights has {len(w)} entries for {k} models")
    if any(not math.isfinite(x) or x < 0 for x in w):
        raise MergeError(f"weights must be finite and ≥ 0; got {w}")
    if sum(w) == 0:
        raise MergeError("weights are all zero; give at least one model a positive weight")
    return w


def check_keep(keep, names: list[str]) -> list[str]:
    """Parameter names (or module-name prefixes, e.g. 'head') not merged; each must match something."""
    if keep is None:
        return []
    if isinstance(keep, str):
        keep = [keep]
    out = []
    for k in keep:
        hits = [n for n in names if n == k or n.startswith(k + ".")]
        if not hits:
            raise MergeError(f"keep={k!r} matches no parameter (parameters: {names[:8]}...)")
        out.extend(h for h in hits if h not in out)
    if len(out) == len(names):
        raise MergeError("keep= covers every parameter: there is nothing left to merge")
    return out


def check_number(x, what: str, low: float = 0.0, low_open: bool = False) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise MergeError(f"{what} must be a number; got {x!r}") from None
    if not math.isfinite(v) or v < low or (low_open and v == low):
        raise MergeError(f"{what} must be a finite number {'>' if low_open else '≥'} {low}; got {x!r}")
    return v
