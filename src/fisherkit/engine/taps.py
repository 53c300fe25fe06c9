"""Small forward hooks the applications need beside the statistics (the engine registers every hook).

* ``OutputLayerTap``: records each ``nn.Linear``'s input and output during a forward, to find the
  layer that produces the model output and its input features h (last-layer EGL, BADGE, BAIT,
  last-layer Laplace).
* ``InputDropout``: dropout of rate p on the input of every ``nn.Linear`` but the first (MC dropout
  for models without Dropout layers, as BALD needs).
* ``mask_gradients``: tensor hooks multiplying parameters' gradients by 0/1 masks (pruned weights
  stay pruned while training).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import FisherkitError


class OutputLayerTap:
    """Context manager: forward hooks on every ``nn.Linear``; ``head(out)`` gives (layer, its input)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.seen: list[tuple[nn.Linear, torch.Tensor, torch.Tensor]] = []
        self.handles = []

    def __enter__(self):
        for m in self.model.modules():
            if isinstance(m, nn.Linear):
                self.handles.append(m.register_forward_hook(self._hook))
        return self

    def _hook(self, module, inputs, output):
        self.seen.append((module, inputs[0].detach(), output))

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def head(self, out: torch.Tensor):
        """The ``nn.Linear`` whose output *is* ``out``, and its input (detached)."""
        for m, h, o in reversed(self.seen):
            if o is out:
                return m, h
        raise FisherkitError(
            "scope='last_layer' (and BADGE/BAIT/EGL diversity) needs the model output to come straight from "
            "an nn.Linear layer; this model's output does not. Use scope='all' or end the model with nn.Linear"
        )


class InputDropout:
    """Context manager: forward pre-hooks applying dropout to the input of every nn.Linear but the first."""

    def __init__(self, model: nn.Module, p: float):
        self.model, self.p, self.handles = model, p, []

    def __enter__(self):
        linears = [m for m in self.model.modules() if isinstance(m, nn.Linear)]
        for m in linears[1:]:
            self.handles.append(m.register_forward_pre_hook(lambda mod, inp: (nn.functional.dropout(inp[0], self.p, True),)))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles.clear()


def mask_gradients(params: dict, masks: dict) -> list:
    """Register ``grad ↦ grad · mask`` on each named parameter; returns the hook handles (``.remove()``)."""
    handles = []
    for n, m in masks.items():
        keep = m.to(params[n].dtype)
        handles.append(params[n].register_hook(lambda g, keep=keep: g * keep))
    return handles
