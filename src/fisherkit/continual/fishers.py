"""The Fisher behind an EWC penalty: the core ``fk.fisher`` kinds plus the common mistake, for comparison.

``fk.fisher(kind=...)`` gives, per data point n, E[g gᵀ] with g the gradient of log p(y|xₙ) of that
*one* sample (exact / MC / empirical), averaged over the N points. Much public EWC code instead
squares the gradient of a *mini-batch mean* loss,

    F̃ᵢ = (1/M) Σ_m ( (1/B) Σ_{n∈batch m} ∂ᵢ ℓ(xₙ, yₙ) )²     (M batches of B points, observed labels),

which is the square of an average, not the average of squares: when per-sample gradients are
nearly uncorrelated F̃ ≈ F_emp / B, and near a minimum (where the mean gradient → 0) it vanishes.
``squared_batch_mean_fisher`` computes exactly that (diagonal only) so experiments can show what
it does to EWC; it is not a Fisher and fisherkit never uses it unless asked by name.
"""

from __future__ import annotations

import torch

from ..curvature import STRUCTURES
from ..curvature.blocks import DiagBlock
from ..engine.data import iterate_batches, model_device_dtype
from ..params import ParamInfo, select_params
from ..errors import FisherkitError, NonFiniteError
from ..likelihoods import get_likelihood

WRONG_KIND = "squared_batch_mean"


def squared_batch_mean_fisher(model: torch.nn.Module, data, likelihood="categorical", params=None,
                              batch_size: int = 64):
    """Diagonal of the *mis*-computed Fisher F̃ᵢ = mean over batches of (∂ᵢ mean-batch-loss)².

    Returns a ``Diagonal`` curvature (``kind="squared_batch_mean"``, ``num_samples`` = N) so it can
    stand wherever a Fisher does. ``batch_size`` is the mini-batch B whose mean gradient is squared.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise FisherkitError(f"batch_size must be a positive integer; got {batch_size!r}")
    lik = get_likelihood(likelihood)
    chosen = select_params(model, params)
    names, tensors = list(chosen), list(chosen.values())
    info = ParamInfo(names, [tuple(p.shape) for p in tensors])
    device, dtype = model_device_dtype(model)
    total = torch.zeros(info.size, device=device, dtype=dtype)
    n, m = 0, 0
    for i, x, y in iterate_batches(data, batch_size, device, dtype):
        if y is None:
            raise FisherkitError(f"batch {i} has no labels; the squared batch-mean gradient needs observed labels")
        out = model(x)
        lik.check(out, y, i)
        loss = lik.nll(out, y).mean()
        grads = torch.autograd.grad(loss, tensors, allow_unused=True)
        flat = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, tensors)])
        if not torch.isfinite(flat).all():
            raise NonFiniteError(f"non-finite gradient in batch {i}")
        total += flat.detach() ** 2
        n += x.shape[0]
        m += 1
    return STRUCTURES["diag"](info, n, WRONG_KIND, lik.to_config(), [DiagBlock(names, info.numels, total / m)])
