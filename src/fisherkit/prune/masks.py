"""Masks of a pruned model, and keeping them applied while it trains.

A pruned model carries its masks as a plain attribute (``fisherkit_masks``: parameter name → bool
tensor, True = kept), so its ``state_dict`` is that of the unpruned architecture. ``keep_masked``
zeroes the masked gradients (hooks on the parameters) and, given the optimizer, re-applies the masks
after every ``step`` — momentum, Adam's moments or weight decay can then never revive a weight.
"""

from __future__ import annotations

import torch

from ..engine.taps import mask_gradients
from ._checks import PruneError

ATTR = "fisherkit_masks"


def masks(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The masks of a model returned by ``prune`` (name → bool tensor, True = kept); {} if none."""
    return dict(getattr(model, ATTR, {}) or {})


def set_masks(model: torch.nn.Module, new: dict[str, torch.Tensor]) -> None:
    named = dict(model.named_parameters())
    for n, m in new.items():
        if n not in named or tuple(named[n].shape) != tuple(m.shape):
            raise PruneError(f"mask {n!r} of shape {tuple(m.shape)} does not fit the model")
    object.__setattr__(model, ATTR, {n: m.to(torch.bool) for n, m in new.items()})


def apply_masks(model: torch.nn.Module, mask: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
    """Zero every masked weight in place (the model's own masks by default); returns the model."""
    mask = masks(model) if mask is None else mask
    named = dict(model.named_parameters())
    with torch.no_grad():
        for n, m in mask.items():
            named[n].mul_(m.to(named[n].dtype))
    return model


def sparsity(model: torch.nn.Module, names=None) -> float:
    """Fraction of exactly-zero entries among ``names`` (default: the masked parameters, else all weights)."""
    named = dict(model.named_parameters())
    names = list(names or masks(model) or [n for n, p in named.items() if p.dim() > 1])
    total = sum(named[n].numel() for n in names)
    zeros = sum(int((named[n] == 0).sum()) for n in names)
    return zeros / max(total, 1)


class keep_masked:
    """Keep a pruned model's masks applied while training: ``with keep_masked(model, opt): train(...)``.

    Gradients of masked entries are zeroed by tensor hooks; with ``optimizer``, the masks are re-applied
    after each ``optimizer.step()``. ``remove()`` (or leaving the ``with`` block) takes the hooks off.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None, mask=None):
        self.model = model
        self.mask = masks(model) if mask is None else dict(mask)
        if not self.mask:
            raise PruneError("the model has no masks; prune it with fisherkit.prune.prune first (or pass mask=)")
        self._handles = mask_gradients(dict(model.named_parameters()), self.mask)  # the engine registers hooks
        if optimizer is not None:
            self._handles.append(optimizer.register_step_post_hook(lambda *_: apply_masks(model, self.mask)))
        apply_masks(model, self.mask)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
        return False
