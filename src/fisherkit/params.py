"""Which parameters a Fisher is over: ``ParamInfo`` (names and shapes) and ``select_params``.

The bottom of the stack: ``engine``, ``curvature``, io and every application import these from
here. A *flat vector* over a ``ParamInfo`` is the concatenation of its parameters, in
``named_parameters`` order, each flattened in C order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .errors import FisherkitError


@dataclass
class ParamInfo:
    """Names and shapes of the differentiated parameters, in ``named_parameters`` order."""

    names: list[str]
    shapes: list[tuple[int, ...]]

    @property
    def numels(self) -> list[int]:
        out = []
        for s in self.shapes:
            n = 1
            for d in s:
                n *= d
            out.append(n)
        return out

    @property
    def offsets(self) -> list[int]:
        off, acc = [], 0
        for n in self.numels:
            off.append(acc)
            acc += n
        return off

    @property
    def size(self) -> int:
        return sum(self.numels)

    def index(self, name: str) -> int:
        return self.names.index(name)

    def split(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Flat vector → dict name → tensor of the parameter's shape (views of ``flat``)."""
        return {n: t.reshape(s) for n, t, s in zip(self.names, torch.split(flat, self.numels), self.shapes)}

    def join(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """Dict name → tensor → flat vector in this order."""
        return torch.cat([parts[n].reshape(-1) for n in self.names])

    @classmethod
    def of(cls, chosen: dict[str, torch.Tensor]) -> "ParamInfo":
        return cls(list(chosen), [tuple(p.shape) for p in chosen.values()])


def select_params(model: nn.Module, params=None) -> dict[str, nn.Parameter]:
    """The parameters to differentiate: ``requires_grad`` ones, or the given names / tensors.

    Tied parameters (one tensor registered under two names) appear once, under their first name,
    as ``named_parameters`` yields them.
    """
    if not isinstance(model, nn.Module):
        raise FisherkitError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    named = dict(model.named_parameters())
    if params is None:
        chosen = {n: p for n, p in named.items() if p.requires_grad}
    else:
        if isinstance(params, (str, torch.Tensor)):
            params = [params]
        ids = {id(p): n for n, p in named.items()}
        wanted = set()
        for p in params:
            if isinstance(p, str):
                if p not in named:
                    raise FisherkitError(f"parameter {p!r} is not in the model (it has {list(named)[:8]}...)")
                wanted.add(p)
            elif isinstance(p, torch.Tensor):
                if id(p) not in ids:
                    raise FisherkitError(f"a tensor of shape {tuple(p.shape)} in params= is not a parameter of the model")
                wanted.add(ids[id(p)])
            else:
                raise FisherkitError(f"params= takes parameter names or tensors; got {type(p).__name__}")
        chosen = {n: p for n, p in named.items() if n in wanted}
    if not chosen:
        raise FisherkitError("the model has no trainable parameters to compute a Fisher for")
    return chosen
