"""How fisherkit calls a model and finds its logits and labels: tensors, tuples, dicts, HF outputs.

A batch is ``(inputs, labels)`` or a mapping (a HuggingFace ``BatchEncoding`` or any dict) whose
``labels`` entry, if present, holds the labels. ``inputs`` may be

* a tensor — ``model(x)``;
* a tuple / list of tensors — ``model(*x)``;
* a mapping of tensors — ``model(**x)`` (e.g. ``input_ids``, ``attention_mask``).

The model may return a tensor, a tuple (the first element), a mapping or a HuggingFace
``ModelOutput`` (its ``"logits"``). ``output=`` overrides the choice: a key / attribute name, an
index, or a callable ``output(model_output) -> logits``.

Labels are aligned with the logits (``[B]`` or ``[B, T]``); positions labelled ``ignore_index``
(−100, as in PyTorch and HuggingFace) are left out of every kind of Fisher. ``shift_labels=True`` is
the causal-LM convention: position t's logits predict label t+1 (HuggingFace passes
``labels = input_ids`` and shifts inside the loss), so logits drop their last position and labels
their first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..errors import FisherkitError, ShapeError

LABEL_KEYS = ("labels", "label", "y")
IGNORE_INDEX = -100


def input_tensors(x) -> list[torch.Tensor]:
    """The tensors of an input (a tensor, a tuple/list or a mapping), in order."""
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, Mapping):
        return [v for v in x.values() if isinstance(v, torch.Tensor)]
    if isinstance(x, (tuple, list)):
        return [v for v in x if isinstance(v, torch.Tensor)]
    return []


def batch_len(x) -> int:
    """Number of rows (samples) of an input: the leading dimension of its first tensor."""
    ts = input_tensors(x)
    if not ts:
        raise FisherkitError(f"the inputs hold no tensor (got {type(x).__name__})")
    n = ts[0].shape[0] if ts[0].dim() else 1
    for t in ts[1:]:
        if t.dim() and t.shape[0] != n:
            raise ShapeError(f"the input tensors disagree on the batch size ({n} vs {t.shape[0]})")
    return int(n)


def is_inputs(x) -> bool:
    """A tensor, or a non-empty tuple/list/mapping of tensors only."""
    if isinstance(x, torch.Tensor):
        return True
    if isinstance(x, Mapping):
        return bool(x) and all(isinstance(v, torch.Tensor) for v in x.values())
    if isinstance(x, (tuple, list)):
        return bool(x) and all(isinstance(v, torch.Tensor) for v in x)
    return False


def sample_count(x, f: torch.Tensor, mask: torch.Tensor | None, per_token: bool) -> int:
    """What a batch adds to N: its rows, or with ``per_token`` its counted output positions."""
    if not per_token:
        return batch_len(x)
    return int(mask.sum()) if mask is not None else int(math.prod(f.shape[:-1]))


def map_inputs(x, fn):
    """Apply ``fn`` to every tensor of an input (tensor, tuple/list or mapping), keeping its form."""
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, Mapping):
        return {k: (fn(v) if isinstance(v, torch.Tensor) else v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return tuple(fn(v) if isinstance(v, torch.Tensor) else v for v in x)
    return x


def slice_inputs(x, s: slice):
    return map_inputs(x, lambda t: t[s] if t.dim() else t)


def as_call_args(x) -> tuple[tuple, dict]:
    """(args, kwargs) to call a model with the inputs ``x``."""
    if isinstance(x, Mapping):
        return (), dict(x)
    if isinstance(x, (tuple, list)):
        return tuple(x), {}
    return (x,), {}


def call(fn: Callable, x):
    """``fn(x)``, ``fn(*x)`` or ``fn(**x)`` by the form of the inputs."""
    if isinstance(x, Mapping):
        return fn(**x)
    if isinstance(x, (tuple, list)):
        return fn(*x)
    return fn(x)


@dataclass
class Adapter:
    """Where the logits are in a model's output, and how labels line up with them."""

    output: Any = None  # None (automatic) | str key/attribute | int index | callable
    shift_labels: bool = False
    ignore_index: int | None = IGNORE_INDEX

    def logits(self, out) -> torch.Tensor:
        """The logits the Fisher is about (shifted for ``shift_labels``)."""
        f = self.raw_logits(out)
        if self.shift_labels:
            if f.dim() < 3:
                raise ShapeError(f"shift_labels=True needs sequence logits [B, T, C]; got {tuple(f.shape)}")
            f = f[:, :-1]
        return f

    def raw_logits(self, out) -> torch.Tensor:
        """The logits tensor picked from the model's output (not shifted)."""
        o = self.output
        if callable(o):
            f = o(out)
        elif isinstance(o, str):
            if isinstance(out, Mapping) and o in out:
                f = out[o]
            elif hasattr(out, o):
                f = getattr(out, o)
            else:
                raise FisherkitError(f"output={o!r}: the model's output ({type(out).__name__}) has no such entry"
                                     + (f"; it has {list(out.keys())}" if isinstance(out, Mapping) else ""))
        elif isinstance(o, int) and not isinstance(o, bool):
            f = out[o]
        elif o is None:
            if isinstance(out, torch.Tensor):
                f = out
            elif isinstance(out, Mapping):
                if "logits" not in out:
                    raise FisherkitError(f"the model returned a mapping without 'logits' (keys {list(out.keys())}); "
                                         "pass output='<key>' or output=callable")
                f = out["logits"]
            elif isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
                f = out[0]
            else:
                raise FisherkitError(f"the model returned a {type(out).__name__}; pass output= (a key, an index or a "
                                     "callable) to say where its logits are")
        else:
            raise FisherkitError(f"output= takes None, a key, an index or a callable; got {type(o).__name__}")
        if not isinstance(f, torch.Tensor):
            raise FisherkitError(f"the logits picked from the model's output are a {type(f).__name__}, not a tensor")
        return f

    def labels(self, y: torch.Tensor | None) -> torch.Tensor | None:
        if y is None or not self.shift_labels:
            return y
        if y.dim() < 2:
            raise ShapeError(f"shift_labels=True needs sequence labels [B, T]; got {tuple(y.shape)}")
        return y[:, 1:]

    def prepare_labels(self, y: torch.Tensor | None, lik_name: str):
        """``(labels, mask)`` aligned with the logits: shifted, and positions labelled ``ignore_index``
        given a valid placeholder label (0) with ``mask`` False there (None when every position counts)."""
        y = self.labels(y)
        mask = self.mask(y, lik_name)
        return (y if mask is None else y.masked_fill(~mask, 0)), mask

    def mask(self, y: torch.Tensor | None, lik_name: str) -> torch.Tensor | None:
        """Positions that count (``[B, *E]`` bool), or None when all do."""
        if y is None or self.ignore_index is None or lik_name != "categorical" or y.dtype.is_floating_point:
            return None
        m = y != self.ignore_index
        return None if bool(m.all()) else m

    def forward(self, model, x):
        """The model's logits for inputs ``x``."""
        return self.logits(call(model, x))

    def functional(self, model, params_and_buffers, x):
        """The logits of ``torch.func.functional_call(model, params_and_buffers, ...)`` for inputs ``x``."""
        from torch.func import functional_call

        args, kwargs = as_call_args(x)
        return self.logits(functional_call(model, params_and_buffers, args, kwargs))


DEFAULT = Adapter()


def make_adapter(output=None, shift_labels: bool = False, ignore_index: int | None = IGNORE_INDEX) -> Adapter:
    if not isinstance(shift_labels, bool):
        raise FisherkitError(f"shift_labels must be True or False; got {shift_labels!r}")
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
        raise FisherkitError(f"ignore_index must be an int or None; got {ignore_index!r}")
    if output is not None and not (callable(output) or isinstance(output, (str, int))) or isinstance(output, bool):
        raise FisherkitError(f"output= takes None, a key, an index or a callable; got {output!r}")
    return Adapter(output, shift_labels, ignore_index)
