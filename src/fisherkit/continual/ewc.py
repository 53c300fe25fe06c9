"""Elastic Weight Consolidation (Kirkpatrick et al. 2017), online EWC (Schwarz et al. 2018) and
KFAC-structured penalties (Ritter et al. 2018), with the Fisher computed per sample by ``fk.fisher``.

The penalty, added to the loss of the task being learnt, is

    Ω(θ) = λ/2 · Σ_t w_t (θ − θ*_t)ᵀ F_t (θ − θ*_t)

* ``mode="separate"``: one term per consolidated task, w_t = 1, θ*_t the weights after task t.
* ``mode="online"``: F ← γ F + F_new and a single anchor θ* = the weights after the latest task,
  i.e. w_t = γ^(T−1−t) with every anchor replaced by the latest weights. Diagonal / dense / block
  Fishers are merged into one matrix (constant memory); Kronecker-factored ones (``"kfac"``,
  ``"ekfac"``) keep one factor pair per task, since a sum of Kronecker products is not one.

**Scale of λ.** F_t is the *mean* over the task's N_t points (``fk.fisher`` convention) of the
per-sample E_y[∇log p ∇log pᵀ]. So Ω here equals a paper's penalty when that paper also writes
``λ/2 Σᵢ Fᵢ (θᵢ − θ*ᵢ)²`` with a mean Fisher (Kirkpatrick et al. 2017). Convert as:
no ½ in the paper → λ_here = 2 λ_paper; a summed Fisher (N·F) → λ_here = N λ_paper; the Laplace
posterior of task A with a *mean* training loss on task B of N_B points → λ_here = N_A / N_B.
A "Fisher" from squared mini-batch-mean gradients is ≈ F/B, so its λ values are ≈ B× too large.

KFAC penalties never form a matrix: per layer, with D = [W − W* | b − b*] (out × in+1),
(θ−θ*)ᵀ F (θ−θ*) = ⟨D, G D A⟩ (the ``Curvature.mv`` of a Kronecker block).

Parameters that appear after a consolidation (a new head) carry no penalty; parameters that grew
(a widened head) are penalised on their old entries (the leading slice of the old shape).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import api
from ..curvature.io import check_against_model, from_tensors, read_state, to_tensors, write_state
from ..choices import check_structure
from ..errors import FisherkitError, NonFiniteError, ShapeError
from ..likelihoods import get_likelihood
from .fishers import WRONG_KIND, squared_batch_mean_fisher

# options passed through to fk.fisher for models with dict inputs / HF outputs / token sequences
FISHER_OPTIONS = ("output", "shift_labels", "ignore_index", "per_token", "kfac_approx", "max_memory")
EWC_STRUCTURES = ("diag", "kfac", "ekfac", "block", "dense", "lowrank")
EWC_REFUSED = {"implicit": "an implicit Fisher stores no matrix: every penalty evaluation would re-run the old "
                           "task's data, which EWC exists to avoid; use 'lowrank' (its top eigenpairs) or 'kfac'"}
KINDS = ("exact", "mc", "empirical", WRONG_KIND)
MERGEABLE = ("diag", "block", "dense")
FORMAT_VERSION = 1


@dataclass
class Term:
    """One quadratic term w · (θ − θ*)ᵀ F (θ − θ*) of the penalty."""

    fisher: object  # a Curvature over ``fisher.info.names``
    anchor: dict[str, torch.Tensor]
    weight: float
    tasks: list[int]


def _check_number(name, value, low, high=math.inf, low_open=False):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and value <= high
    if not ok:
        rng = f"{'(' if low_open else '['}{low}, {high}]"
        raise FisherkitError(f"{name} must be a finite number in {rng}; got {value!r}")
    return float(value)


def _is_empty(data) -> bool:
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return data[0].shape[0] == 0
    return hasattr(data, "__len__") and len(data) == 0


class EWC:
    """EWC penalty for ``model``; ``consolidate(task_data)`` after each task, ``penalty()`` in the loop.

    Example::

        ewc = EWC(model, lam=100.0)                # diagonal exact Fisher, separate penalties
        for X, y in tasks:
            train(model, X, y, extra_loss=ewc.penalty)   # loss = task loss + ewc.penalty()
            ewc.consolidate((X, y))

    Args:
        lam: λ ≥ 0 (see the module docstring for its exact scale).
        mode: ``"separate"`` (one term per task) or ``"online"`` (F ← γF + F_new, latest anchor).
        gamma: decay γ ∈ [0, 1] of old Fishers in online mode (ignored in separate mode).
        structure: ``"diag" | "kfac" | "ekfac" | "block" | "dense"``.
        kind: ``"exact" | "mc" | "empirical"`` (per-sample, via ``fk.fisher``) or
            ``"squared_batch_mean"`` (the common mistake, diagonal only, for comparison).
        likelihood: as for ``fk.fisher`` (``"categorical"`` = cross-entropy on logits).
        mc_samples, batch_size: passed to ``fk.fisher``; ``batch_size`` is also the B of
            ``"squared_batch_mean"`` (default 64).
        fisher_options: further ``fk.fisher`` options for language and HF models, e.g.
            ``{"shift_labels": True}`` for a causal LM fed HF batches (``output``, ``ignore_index``,
            ``per_token``, ``kfac_approx``, ``max_memory``); saved with the state (a callable
            ``output`` is not, pass it again after ``load``).
    """

    def __init__(self, model: torch.nn.Module, lam: float = 100.0, mode: str = "separate", gamma: float = 1.0,
                 structure: str = "diag", kind: str = "exact", likelihood="categorical", mc_samples: int = 1,
                 batch_size: int | None = None, fisher_options: dict | None = None):
        if not isinstance(model, torch.nn.Module):
            raise FisherkitError(f"EWC needs a torch.nn.Module; got {type(model).__name__}")
        self.lam = _check_number("lam (λ)", lam, 0.0)
        if mode not in ("separate", "online"):
            raise FisherkitError(f"mode must be 'separate' or 'online'; got {mode!r}")
        self.gamma = _check_number("gamma (γ)", gamma, 0.0, 1.0)
        check_structure(structure, EWC_STRUCTURES, EWC_REFUSED)
        if kind not in KINDS:
            raise FisherkitError(f"kind must be one of {list(KINDS)}; got {kind!r}")
        if kind == WRONG_KIND and structure != "diag":
            raise FisherkitError(f"kind={WRONG_KIND!r} only exists as a diagonal; use structure='diag'")
        self.model = model
        self.mode, self.structure, self.kind = mode, structure, kind
        self.likelihood = get_likelihood(likelihood)
        self.mc_samples, self.batch_size = mc_samples, batch_size
        self.fisher_options = dict(fisher_options or {})
        unknown = set(self.fisher_options) - set(FISHER_OPTIONS)
        if unknown:
            raise FisherkitError(f"fisher_options takes {list(FISHER_OPTIONS)}; got {sorted(unknown)}")
        self.terms: list[Term] = []
        self.num_tasks = 0

    # ---- consolidation -----------------------------------------------------------------------
    def compute_fisher(self, task_data, params=None, generator=None, progress=False):
        """The Fisher of ``task_data`` at the current weights (model in eval mode, mode restored)."""
        if _is_empty(task_data):
            raise FisherkitError("consolidate() got empty task data: at least one sample is needed for a Fisher")
        modes = {m: m.training for m in self.model.modules()}
        self.model.eval()
        try:
            if self.kind == WRONG_KIND:
                F = squared_batch_mean_fisher(self.model, task_data, self.likelihood, params, self.batch_size or 64)
            else:
                F = api.fisher(self.model, task_data, likelihood=self.likelihood, kind=self.kind,
                               structure=self.structure, mc_samples=self.mc_samples, generator=generator,
                               params=params, batch_size=self.batch_size, progress=progress, **self.fisher_options)
        finally:
            for m, training in modes.items():
                m.train(training)
        for key, t in to_tensors(F)[0].items():
            if not torch.isfinite(t).all():
                raise NonFiniteError(f"the Fisher has non-finite entries ({key}); "
                                     "check the data and the model's outputs for NaN/inf")
        return F

    def consolidate(self, task_data, params=None, generator=None, progress=False) -> "EWC":
        """After a task: anchor θ* = current weights and add the task's Fisher to the penalty.

        ``task_data``: ``(X, y)``, a DataLoader or an iterable of batches (labels are needed for
        ``kind="empirical"`` / ``"squared_batch_mean"``). ``params``: names (or tensors) of the
        parameters the task uses, e.g. the body and the task's head of a multi-head model;
        default: every trainable parameter. The model's train/eval modes are restored.
        """
        F = self.compute_fisher(task_data, params=params, generator=generator, progress=progress)
        current = dict(self.model.named_parameters())
        anchor = {n: current[n].detach().clone() for n in F.info.names}
        task = self.num_tasks
        if self.mode == "online":
            for term in self.terms:
                term.weight *= self.gamma
                term.anchor = {n: self._slice(current, n, a.shape).detach().clone() for n, a in term.anchor.items()}
            if self.structure in MERGEABLE:
                for term in self.terms:
                    if term.fisher.info.names == F.info.names and term.fisher.info.shapes == F.info.shapes:
                        term.fisher = term.fisher * term.weight + F
                        term.weight, term.anchor = 1.0, anchor
                        term.tasks.append(task)
                        self.num_tasks += 1
                        return self
        self.terms.append(Term(F, anchor, 1.0, [task]))
        self.num_tasks += 1
        return self

    # ---- the penalty ---------------------------------------------------------------------------
    @staticmethod
    def _slice(params, name, shape):
        if name not in params:
            raise FisherkitError(f"parameter {name!r} was consolidated but is no longer in the model")
        p = params[name]
        if tuple(p.shape) == tuple(shape):
            return p
        if p.dim() != len(shape) or any(a < b for a, b in zip(p.shape, shape)):
            raise ShapeError(f"parameter {name!r} was consolidated with shape {tuple(shape)} but now has shape "
                             f"{tuple(p.shape)}; EWC handles parameters that grow, not ones that shrink or reshape")
        return p[tuple(slice(0, s) for s in shape)]

    def penalty(self) -> torch.Tensor:
        """Ω(θ) = λ/2 Σ_t w_t (θ−θ*_t)ᵀ F_t (θ−θ*_t), differentiable in the model's parameters.

        Before any ``consolidate()`` it is a zero scalar (nothing to protect yet).
        """
        p0 = next(self.model.parameters(), None)
        zero = torch.zeros((), device=p0.device if p0 is not None else None, dtype=p0.dtype if p0 is not None else None)
        if not self.terms or self.lam == 0.0:
            return zero
        params = dict(self.model.named_parameters())
        total = zero
        for term in self.terms:
            d = {n: self._slice(params, n, a.shape) - a for n, a in term.anchor.items()}
            flat = term.fisher.flatten(d)
            total = total + term.weight * torch.dot(flat, term.fisher.mv(flat))
        return 0.5 * self.lam * total

    __call__ = penalty

    # ---- save / load -----------------------------------------------------------------------------
    def _config(self):
        return {"lam": self.lam, "mode": self.mode, "gamma": self.gamma, "structure": self.structure,
                "kind": self.kind, "likelihood": self.likelihood.to_config(), "mc_samples": self.mc_samples,
                "batch_size": self.batch_size, "num_tasks": self.num_tasks,
                "fisher_options": {k: v for k, v in self.fisher_options.items() if not callable(v)}}

    def save(self, path) -> None:
        """Write every term (Fisher + anchor) and the config to a safetensors file, atomically
        (temp file, fsync, rename): a crash mid-save leaves the previous file intact."""
        tensors: dict[str, torch.Tensor] = {}
        terms = []
        for i, term in enumerate(self.terms):
            ft, meta = to_tensors(term.fisher, f"t{i}.F.")
            tensors.update(ft)
            for n, a in term.anchor.items():
                tensors[f"t{i}.anchor.{n}"] = a
            terms.append({"weight": term.weight, "tasks": term.tasks, **meta})
        model_sig = [[n, list(p.shape)] for n, p in self.model.named_parameters()]
        write_state(tensors, path, "fisherkit.ewc", FORMAT_VERSION, config=self._config(), terms=terms, model=model_sig)

    @classmethod
    def load(cls, path, model: torch.nn.Module) -> "EWC":
        """Restore an ``EWC`` saved by ``save``; refuses a file saved from a different architecture."""
        tensors, header = read_state(path, "fisherkit.ewc", FORMAT_VERSION, "fisherkit EWC")
        saved = header["model"]
        check_against_model([n for n, _ in saved], [tuple(s) for _, s in saved], model,
                            f"the EWC state in {path} (saved from a different model)", exact=True)
        cfg = header["config"]
        ewc = cls(model, lam=cfg["lam"], mode=cfg["mode"], gamma=cfg["gamma"], structure=cfg["structure"],
                  kind=cfg["kind"], likelihood=cfg["likelihood"], mc_samples=cfg["mc_samples"],
                  batch_size=cfg["batch_size"], fisher_options=cfg.get("fisher_options"))
        p0 = next(model.parameters())
        tensors = {k: v.to(device=p0.device, dtype=p0.dtype) for k, v in tensors.items()}
        for i, t in enumerate(header["terms"]):
            F = from_tensors(t, tensors)
            anchor = {n: tensors[f"t{i}.anchor.{n}"] for n in F.info.names}
            ewc.terms.append(Term(F, anchor, float(t["weight"]), list(t["tasks"])))
        ewc.num_tasks = cfg["num_tasks"]
        return ewc

    def __repr__(self) -> str:
        return (f"EWC(lam={self.lam}, mode={self.mode!r}, structure={self.structure!r}, kind={self.kind!r}, "
                f"tasks={self.num_tasks}, terms={len(self.terms)})")
