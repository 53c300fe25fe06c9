"""Networks for continual learning: a shared MLP body with one or more output heads.

``MultiHeadMLP`` is one model for every scenario of van de Ven & Tolias (2019):

* single-head (permuted / rotated / domain-incremental): one head, never changed;
* task-incremental (multi-head): ``add_head(n)`` for each new task, ``model.task = t`` picks the
  head used by ``forward`` — heads appear *after* earlier tasks were consolidated;
* class-incremental: one head that ``grow_head(0, n)`` widens as new classes arrive, keeping the
  rows of the classes already learnt — a parameter that grows after consolidation.

Parameter names are stable: ``body.0.weight``, ..., ``heads.<t>.weight``, ``heads.<t>.bias``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import FisherkitError


class MultiHeadMLP(nn.Module):
    """x ↦ head_task(ReLU MLP body(x)); e.g. ``MultiHeadMLP(64, (256, 256), [10])`` is 64-256-256-10."""

    def __init__(self, n_inputs: int, hidden: tuple[int, ...] = (256, 256), heads: list[int] | None = None):
        super().__init__()
        layers: list[nn.Module] = []
        width = n_inputs
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.body = nn.Sequential(*layers)
        self.features = width
        self.heads = nn.ModuleList([nn.Linear(width, n) for n in (heads or [])])
        self.task = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not 0 <= self.task < len(self.heads):
            raise FisherkitError(f"model.task = {self.task} but the model has {len(self.heads)} head(s)")
        return self.heads[self.task](self.body(x))

    def add_head(self, n_outputs: int) -> int:
        """Append a fresh head with ``n_outputs`` outputs; returns its index."""
        p = next(self.parameters())
        self.heads.append(nn.Linear(self.features, n_outputs).to(device=p.device, dtype=p.dtype))
        return len(self.heads) - 1

    @torch.no_grad()
    def grow_head(self, index: int, n_outputs: int) -> None:
        """Widen head ``index`` to ``n_outputs`` outputs, keeping the existing rows (new rows fresh)."""
        old = self.heads[index]
        if n_outputs < old.out_features:
            raise FisherkitError(f"head {index} has {old.out_features} outputs; it can only grow, not shrink to {n_outputs}")
        if n_outputs == old.out_features:
            return
        new = nn.Linear(self.features, n_outputs).to(device=old.weight.device, dtype=old.weight.dtype)
        new.weight[: old.out_features] = old.weight
        new.bias[: old.out_features] = old.bias
        self.heads[index] = new

    def task_parameter_names(self, task: int | None = None) -> list[str]:
        """Names of the parameters ``forward`` uses for ``task`` (body + that head)."""
        t = self.task if task is None else task
        return [n for n, _ in self.named_parameters() if n.startswith("body.") or n.startswith(f"heads.{t}.")]
