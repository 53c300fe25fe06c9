"""Prior precision P of a Laplace posterior: a scalar, one value per parameter tensor, or one per parameter.

The prior is N(μ₀, P⁻¹) with P = diag(p). ``p`` is stored in the form the user gave (its *shape*
names the prior structure) and expanded to the flat vector over the posterior's parameters when
needed, so that marginal-likelihood tuning keeps the structure it was given:

* ``"scalar"``: a single value for every parameter;
* ``"layerwise"``: one value per parameter tensor (a weight and its bias are separate tensors);
* ``"diagonal"``: one value per parameter.
"""

from __future__ import annotations

import math

import torch

from .errors import LaplaceError

PRIOR_STRUCTURES = ("scalar", "layerwise", "diagonal")


def as_prior_tensor(value, numels: list[int], dtype, device, what: str = "prior_precision") -> torch.Tensor:
    """Validate a prior precision (float, sequence, dict name → float or tensor) → a 0-d, [T] or [P] tensor.

    A dict maps parameter names to values and must name every posterior parameter tensor.
    """
    total, n_tensors = sum(numels), len(numels)
    if isinstance(value, bool) or value is None:
        raise LaplaceError(f"{what} must be a positive number, a sequence or a tensor; got {value!r}")
    if isinstance(value, (int, float)):
        t = torch.tensor(float(value), dtype=dtype, device=device)
    else:
        try:
            t = torch.as_tensor(value).detach().to(dtype=dtype, device=device)
        except (TypeError, ValueError, RuntimeError):
            raise LaplaceError(f"{what} must be a positive number, a sequence or a tensor; got {type(value).__name__}") from None
        if t.dim() > 1:
            raise LaplaceError(f"{what} must be a scalar or a 1-D tensor; got shape {tuple(t.shape)}")
        if t.dim() == 1 and t.numel() == 1:
            t = t[0]
        elif t.dim() == 1 and t.numel() not in (n_tensors, total):
            raise LaplaceError(
                f"{what} has {t.numel()} entries; give 1 (scalar), {n_tensors} (one per parameter tensor) "
                f"or {total} (one per parameter)"
            )
    if not bool(torch.isfinite(t).all()) or bool((t <= 0).any()):
        raise LaplaceError(f"{what} must be positive and finite; got {t.tolist() if t.numel() < 10 else 'a tensor with bad entries'}")
    return t


def prior_from_dict(value: dict, names: list[str]) -> list[float]:
    """Dict parameter name → value, to a list aligned with ``names`` (every name required)."""
    missing = [n for n in names if n not in value]
    extra = [n for n in value if n not in names]
    if missing or extra:
        raise LaplaceError(f"prior_precision dict must name exactly the posterior parameters; missing {missing}, unknown {extra}")
    out = []
    for n in names:
        v = value[n]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise LaplaceError(f"prior_precision[{n!r}] must be a positive finite number; got {v!r}")
        out.append(float(v))
    return out


def prior_structure(p: torch.Tensor, numels: list[int]) -> str:
    """Name of the structure a stored prior tensor has."""
    if p.dim() == 0:
        return "scalar"
    return "layerwise" if p.numel() == len(numels) and p.numel() != sum(numels) else "diagonal"


def expand_prior(p: torch.Tensor, numels: list[int]) -> torch.Tensor:
    """The flat [P] vector p of P = diag(p), differentiable in ``p``."""
    total = sum(numels)
    if p.dim() == 0:
        return p.expand(total)
    if p.numel() == total:
        return p
    return torch.repeat_interleave(p, torch.tensor(numels, device=p.device))


def reshape_prior(p: torch.Tensor, structure: str, numels: list[int]) -> torch.Tensor:
    """Convert a stored prior to ``structure`` (mean over the finer groups when coarsening)."""
    if structure not in PRIOR_STRUCTURES:
        raise LaplaceError(f"prior_structure must be one of {list(PRIOR_STRUCTURES)}; got {structure!r}")
    flat = expand_prior(p, numels)
    if structure == "scalar":
        return flat.mean()
    if structure == "diagonal":
        return flat.clone()
    return torch.stack([piece.mean() for piece in torch.split(flat, numels)])
