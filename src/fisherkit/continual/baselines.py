"""Continual-learning methods that share one training loop (``experiment.train_task``).

A method sees the loop through five hooks: ``before_task``, ``penalty`` (added to the task loss),
``after_backward`` (task-loss gradients in ``.grad``), ``after_step`` and ``after_task``.

* ``FineTune``: no protection (lower bound).
* ``Joint``: trains on the union of every task seen so far (upper bound; ``joint = True``).
* ``L2``: λ/2 ‖θ − θ_prev‖² to the weights after the previous task (an EWC with F = I).
* ``SI`` (Zenke et al. 2017): per parameter ω_k = Σ_steps −g_k Δθ_k along the training path
  (g: task-loss gradient), at a task's end Ω_k += ω_k / (Δ_k² + ξ) with Δ_k the total change over
  the task; penalty c Σ_k Ω_k (θ_k − θ*_k)².
* ``EWCMethod``: ``fisherkit.continual.EWC`` consolidated on each task's training data.

New heads carry no penalty; grown parameters are penalised on their old entries.
"""

from __future__ import annotations

import torch

from ..errors import FisherkitError
from .ewc import EWC

DEFAULT_STRENGTH = {"l2": 1.0, "si": 1.0, "ewc": 1000.0}


def _snapshot(model, names=None):
    return {n: p.detach().clone() for n, p in model.named_parameters() if names is None or n in names}


def _weighted_sq(model, anchor, weights=None):
    """Σ_k w_k (θ_k − θ*_k)² over the anchored parameters (grown ones on their leading slice)."""
    params = dict(model.named_parameters())
    total = None
    for n, a in anchor.items():
        d = EWC._slice(params, n, a.shape) - a
        s = (d * d * weights[n]).sum() if weights is not None else (d * d).sum()
        total = s if total is None else total + s
    return total


class Method:
    name = "method"
    joint = False

    def before_task(self, model, stream, t):
        pass

    def penalty(self, model):
        return None

    def after_backward(self, model):
        pass

    def after_step(self, model):
        pass

    def after_task(self, model, stream, t):
        pass


class FineTune(Method):
    name = "finetune"


class Joint(Method):
    name = "joint"
    joint = True


class L2(Method):
    """λ/2 ‖θ − θ_prev‖² over the parameters the previous tasks used."""

    name = "l2"

    def __init__(self, lam: float = DEFAULT_STRENGTH["l2"]):
        if not lam >= 0:
            raise FisherkitError(f"lam must be ≥ 0; got {lam!r}")
        self.lam, self.anchor = float(lam), None

    def penalty(self, model):
        return None if self.anchor is None else 0.5 * self.lam * _weighted_sq(model, self.anchor)

    def after_task(self, model, stream, t):
        self.anchor = _snapshot(model, set(stream.task_params(model, t)) | set(self.anchor or {}))


class SI(Method):
    """Synaptic Intelligence with strength ``c`` and damping ``xi``."""

    name = "si"

    def __init__(self, c: float = DEFAULT_STRENGTH["si"], xi: float = 0.1):
        if not c >= 0 or not xi > 0:
            raise FisherkitError(f"SI needs c ≥ 0 and xi > 0; got c={c!r}, xi={xi!r}")
        self.c, self.xi = float(c), float(xi)
        self.omega, self.anchor = {}, {}  # Ω and θ* of consolidated tasks
        self.w, self.start, self.prev, self.grad = {}, {}, {}, {}

    def before_task(self, model, stream, t):
        self.start = _snapshot(model)
        self.prev = _snapshot(model)
        self.w = {n: torch.zeros_like(p) for n, p in self.start.items()}

    def penalty(self, model):
        return None if not self.omega else self.c * _weighted_sq(model, self.anchor, self.omega)

    def after_backward(self, model):
        self.grad = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}

    @torch.no_grad()
    def after_step(self, model):
        for n, p in model.named_parameters():
            if n in self.grad and n in self.prev and p.shape == self.prev[n].shape:
                self.w[n] -= self.grad[n] * (p - self.prev[n])
                self.prev[n] = p.detach().clone()

    @torch.no_grad()
    def after_task(self, model, stream, t):
        end = _snapshot(model)
        for n in stream.task_params(model, t):
            if n not in self.start or end[n].shape != self.start[n].shape:
                continue  # a head that appeared or grew during this task: no path integral yet
            contrib = self.w[n] / ((end[n] - self.start[n]) ** 2 + self.xi)
            old = self.omega.get(n)
            if old is not None and old.shape != contrib.shape:  # grew since: add on the old slice
                contrib = contrib[tuple(slice(0, s) for s in old.shape)]
            self.omega[n] = contrib if old is None else old + contrib
            self.anchor[n] = end[n][tuple(slice(0, s) for s in self.omega[n].shape)].clone()


class EWCMethod(Method):
    """EWC in the loop: ``EWC(model, **kwargs)`` consolidated on each task's training data."""

    def __init__(self, lam: float = DEFAULT_STRENGTH["ewc"], name: str = "ewc", **kwargs):
        self.lam, self.kwargs, self.name, self.ewc = lam, kwargs, name, None
        EWC(torch.nn.Linear(1, 1), lam=lam, **kwargs)  # validate the arguments now, not after task 0

    def before_task(self, model, stream, t):
        if self.ewc is None:
            self.ewc = EWC(model, lam=self.lam, **self.kwargs)

    def penalty(self, model):
        return self.ewc.penalty() if self.ewc is not None and self.ewc.terms else None

    def after_task(self, model, stream, t):
        stream.select(model, t)
        gen = torch.Generator().manual_seed(1_000 + t)
        self.ewc.consolidate(stream[t].train, params=stream.task_params(model, t), generator=gen)


EWC_VARIANTS = {
    "ewc": {}, "ewc-online": {"mode": "online", "gamma": 0.8}, "ewc-kfac": {"structure": "kfac"},
    "ewc-mc": {"kind": "mc"}, "ewc-empirical": {"kind": "empirical"}, "ewc-sqbatch": {"kind": "squared_batch_mean"},
}
METHODS = ("finetune", "joint", "l2", "si") + tuple(EWC_VARIANTS)


def make_method(name: str, strength: float | None = None) -> Method:
    """A fresh method by name: finetune, joint, l2, si, ewc, ewc-online, ewc-kfac, ewc-mc,
    ewc-empirical, ewc-sqbatch (the squared mini-batch-mean gradient "Fisher")."""
    if name == "finetune":
        return FineTune()
    if name == "joint":
        return Joint()
    if name == "l2":
        return L2(DEFAULT_STRENGTH["l2"] if strength is None else strength)
    if name == "si":
        return SI(DEFAULT_STRENGTH["si"] if strength is None else strength)
    if name in EWC_VARIANTS:
        return EWCMethod(DEFAULT_STRENGTH["ewc"] if strength is None else strength, name=name, **EWC_VARIANTS[name])
    raise FisherkitError(f"unknown method {name!r}; use one of {list(METHODS)}")
