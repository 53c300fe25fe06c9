"""Model plumbing for Laplace: calling the model on a batch, the last layer, output Jacobians.

Nothing here changes the model: no hooks, no mode switches, parameters swapped only inside
``torch.func.functional_call``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from .errors import LaplaceError


def call_model(model: nn.Module, x):
    """model(x) for a tensor, model(*x) for a tuple, model(**x) for a dict; logits as [B, C]."""
    if isinstance(x, dict) or hasattr(x, "keys"):
        out = model(**x)
    elif isinstance(x, (tuple, list)):
        out = model(*x)
    else:
        out = model(x)
    return as_2d(pick_output(out))


def pick_output(out):
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "keys") and "logits" in out.keys():
        return out["logits"]
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise LaplaceError(f"the model returned {type(out).__name__}; Laplace needs a tensor of outputs (or logits first)")


def as_2d(f: torch.Tensor) -> torch.Tensor:
    if f.dim() == 1:
        return f[:, None]
    if f.dim() != 2:
        raise LaplaceError(f"Laplace predictions need outputs of shape [B] or [B, C]; the model gave {tuple(f.shape)}")
    return f


def batch_len(x) -> int:
    if isinstance(x, torch.Tensor):
        return int(x.shape[0])
    if isinstance(x, (tuple, list)):
        return batch_len(x[0])
    if hasattr(x, "values"):
        return batch_len(next(iter(x.values())))
    raise LaplaceError(f"cannot read a batch size from inputs of type {type(x).__name__}")


def slice_inputs(x, lo: int, hi: int):
    if isinstance(x, torch.Tensor):
        return x[lo:hi]
    if isinstance(x, (tuple, list)):
        return type(x)(slice_inputs(a, lo, hi) for a in x)
    return {k: slice_inputs(v, lo, hi) for k, v in x.items()}


def iterate_data(data, batch_size: int | None):
    """Yield (X, y) batches from an (X, y) pair of tensors, a DataLoader or an iterable of batches."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[1], torch.Tensor) and not isinstance(data[0], (tuple, list)) and (
        isinstance(data[0], torch.Tensor) or hasattr(data[0], "keys")
    ):
        X, y = data
        n = batch_len(X)
        if n != int(y.shape[0]):
            raise LaplaceError(f"inputs have {n} rows but labels have {int(y.shape[0])}")
        step = batch_size or n
        for lo in range(0, n, step):
            yield slice_inputs(X, lo, lo + step), y[lo : lo + step]
        return
    for i, batch in enumerate(data):
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise LaplaceError(f"batch {i} is not an (inputs, labels) pair")
        yield batch[0], batch[1]


def trainable_names(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def find_last_layer(model: nn.Module) -> tuple[str, nn.Linear]:
    """The last ``nn.Linear`` with a trainable weight, in ``named_modules`` order."""
    found = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and m.weight.requires_grad:
            found = (name, m)
    if found is None:
        raise LaplaceError("subset='last_layer' needs an nn.Linear output layer; pass subset=[parameter names] instead")
    return found


def last_layer_params(model: nn.Module) -> tuple[str, list[str]]:
    name, m = find_last_layer(model)
    prefix = f"{name}." if name else ""
    names = [prefix + "weight"] + ([prefix + "bias"] if m.bias is not None and m.bias.requires_grad else [])
    return name, names


def jacobians(model: nn.Module, names: list[str], x: torch.Tensor):
    """Outputs f [B, C] and Jacobians J = ∂f/∂θ [B, C, P] over the parameters ``names`` (flat order).

    Per-sample ``jacrev`` under ``vmap`` of ``functional_call``; the caller chunks the batch.
    """
    params = dict(model.named_parameters())
    chosen = {n: params[n].detach() for n in names}

    def f(theta, x1):
        out = as_2d(pick_output(functional_call(model, theta, (x1.unsqueeze(0),), strict=False)))[0]
        return out, out

    jac, out = vmap(jacrev(f, has_aux=True), in_dims=(None, 0), randomness="error")(chosen, x)
    B, C = out.shape
    J = torch.cat([jac[n].reshape(B, C, -1) for n in names], -1)
    return out, J


def forward_with(model: nn.Module, theta: dict, x):
    """Outputs [B, C] of the model with the parameters in ``theta`` swapped in (model untouched)."""
    if isinstance(x, torch.Tensor):
        args, kwargs = (x,), {}
    elif isinstance(x, (tuple, list)):
        args, kwargs = tuple(x), {}
    else:
        args, kwargs = (), dict(x)
    return as_2d(pick_output(functional_call(model, theta, args, kwargs, strict=False)))
