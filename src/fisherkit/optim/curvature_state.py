"""The curvature an optimizer keeps between steps, per structure, as exponential moving averages.

Every estimate is refreshed from one mini-batch of B samples (``update``) as
    F̂ ← ema · F̂ + (1 − ema) · F_batch,     F_batch = (1/B) Σₙ Σ_d gₙ,d gₙ,dᵀ  (in its structure),
and its inverse / eigenbasis is refreshed on its own schedule (``refresh``). ``precondition`` applies
the damped inverse to a gradient (dict name → tensor) and ``quad`` gives ΔᵀF̂Δ (undamped), the
quantity the KL trust region and the Levenberg–Marquardt model need.

* ``KronState`` (kfac): A = mean ã ãᵀ, G = mean Σ_d g gᵀ, inverse through eigh(A), eigh(G).
* ``EKronState`` (ekfac, George et al. 2018): the same eigenbasis, with the diagonal S re-fitted
  as the EMA of (Q_Gᵀ ∇ₙ Q_A)² — exact second moments in the Kronecker eigenbasis.
* ``DiagState`` (diag, and the fallback for layers KFAC cannot factor): mean Σ_d g².
* ``DenseState`` (dense): the full P × P matrix of the covered parameters.
"""

from __future__ import annotations

import torch

from ..curvature.linalg import safe_eigh
from ..engine.accumulate import combine_unit, ekfac_sums, hook_persample, kfac_sums, split_unit
from .damping import kron_damped_inverse, pi_factor


def _ema(old, new, ema):
    return new if old is None else ema * old + (1 - ema) * new


class KronState:
    """One Linear/Conv layer: F ≈ G ⊗ A acting on M = [W | b] as M ↦ G M A."""

    kind = "kron"

    def __init__(self, unit):
        self.unit = unit
        self.t: dict[str, torch.Tensor | None] = {"A": None, "G": None, "la": None, "qa": None, "lg": None, "qg": None}

    @property
    def names(self):
        return self.unit.names

    def update(self, a, g, n, ema):
        A, G = kfac_sums(a, g)
        self.t["A"] = _ema(self.t["A"], A / n, ema)
        self.t["G"] = _ema(self.t["G"], G / n, ema)

    def refresh(self):
        # contiguous copies: eigh returns column-major eigenvectors, and a checkpoint stores row-major
        # ones; the same layout keeps the matmuls (and so the resumed run) bit-identical
        self.t["la"], self.t["qa"] = (t.contiguous() for t in safe_eigh(self.t["A"]))
        self.t["lg"], self.t["qg"] = (t.contiguous() for t in safe_eigh(self.t["G"]))

    @property
    def ready(self):
        return self.t["qa"] is not None

    def precondition(self, grads, damping, pi_damping):
        t = self.t
        M = combine_unit(self.unit, grads)
        pi = pi_factor(t["A"], t["G"]) if pi_damping else 1.0
        out = kron_damped_inverse(M, t["la"], t["qa"], t["lg"], t["qg"], damping, pi_damping, pi)
        return split_unit(self.unit, out)

    def quad(self, delta):
        M = combine_unit(self.unit, delta)
        return (M * (self.t["G"] @ M @ self.t["A"])).sum()


class EKronState(KronState):
    """EKFAC layer: F ≈ (Q_G ⊗ Q_A) diag(S) (Q_G ⊗ Q_A)ᵀ."""

    kind = "ekron"

    def __init__(self, unit):
        super().__init__(unit)
        self.t["S"] = None
        self._basis_new = False

    def update(self, a, g, n, ema):
        super().update(a, g, n, ema)
        self._last = (a, g, n)

    def refresh(self):
        super().refresh()
        self._basis_new = True

    def fit_scaling(self, ema):
        """Refit S on the last batch in the current basis (after any basis refresh)."""
        prior = self.t["lg"][:, None] * self.t["la"][None, :]
        if getattr(self, "_last", None) is None:  # basis refreshed without a new batch
            if self._basis_new or self.t["S"] is None:
                self.t["S"] = prior
                self._basis_new = False
            return
        a, g, n = self._last
        s_batch = ekfac_sums(a, g, self.t["qa"], self.t["qg"]) / n
        if self._basis_new or self.t["S"] is None:  # new basis: start from the KFAC eigenvalues
            self.t["S"] = ema * prior + (1 - ema) * s_batch
            self._basis_new = False
        else:
            self.t["S"] = ema * self.t["S"] + (1 - ema) * s_batch
        self._last = None

    def precondition(self, grads, damping, pi_damping):
        t = self.t
        M = combine_unit(self.unit, grads)
        m = t["qg"].T @ M @ t["qa"]
        return split_unit(self.unit, t["qg"] @ (m / (t["S"] + damping)) @ t["qa"].T)

    def quad(self, delta):
        M = combine_unit(self.unit, delta)
        m = self.t["qg"].T @ M @ self.t["qa"]
        return (self.t["S"] * m * m).sum()


class DiagState:
    """Diagonal Fisher of some parameters: mean over samples of Σ_d g²."""

    kind = "diag"

    def __init__(self, names):
        self.names = list(names)
        self.t: dict[str, torch.Tensor | None] = {n: None for n in self.names}

    def update_sums(self, sums: dict, n, ema):
        for k in self.names:
            if k in sums:
                self.t[k] = _ema(self.t[k], sums[k] / n, ema)

    def refresh(self):
        pass

    @property
    def ready(self):
        return all(v is not None for v in self.t.values())

    def precondition(self, grads, damping, pi_damping=False):
        return {k: grads[k] / (self.t[k] + damping) for k in self.names}

    def quad(self, delta):
        return sum((self.t[k] * delta[k] ** 2).sum() for k in self.names)


class DenseState:
    """The full Fisher over ``names`` (flat vector in that order), eigendecomposed at refresh."""

    kind = "dense"

    def __init__(self, names, shapes):
        self.names, self.shapes = list(names), [tuple(s) for s in shapes]
        self.numels = [int(torch.Size(s).numel()) for s in self.shapes]
        self.t: dict[str, torch.Tensor | None] = {"F": None, "vals": None, "vecs": None}

    def update_gram(self, U: torch.Tensor, n, ema):
        self.t["F"] = _ema(self.t["F"], U.T @ U / n, ema)

    def refresh(self):
        self.t["vals"], self.t["vecs"] = (t.contiguous() for t in safe_eigh(self.t["F"]))

    @property
    def ready(self):
        return self.t["vecs"] is not None

    def _flat(self, parts):
        return torch.cat([parts[k].reshape(-1) for k in self.names])

    def _split(self, flat):
        return {k: t.reshape(s) for k, t, s in zip(self.names, torch.split(flat, self.numels), self.shapes)}

    def precondition(self, grads, damping, pi_damping=False):
        vecs, vals = self.t["vecs"], self.t["vals"]
        v = self._flat(grads)
        return self._split(vecs @ ((vecs.T @ v) / (vals + damping)))

    def quad(self, delta):
        v = self._flat(delta)
        return v @ (self.t["F"] @ v)


def diag_from_batch(hook, func: dict) -> dict[str, torch.Tensor]:
    """Σ_n Σ_d (∇ₙ,d)² per parameter from hook triples (ã, g) and torch.func per-sample grads."""
    out = {}
    for u, a, g in hook:
        if a.shape[1] == 1:
            sq = torch.einsum("bo,bi->oi", (g[:, :, 0] ** 2).sum(0), a[:, 0] ** 2)
        else:
            sq = (hook_persample(a, g) ** 2).sum((0, 1))
        out.update(split_unit(u, sq))
    for k, g in func.items():
        out[k] = (g**2).sum((0, 1))
    return out


def persample_matrix(hook, func: dict, names) -> torch.Tensor:
    """Per-sample gradients as a ``[D·B, P]`` matrix, columns in the order of ``names``."""
    parts = {}
    for u, a, g in hook:
        parts.update(split_unit(u, hook_persample(a, g)))
    parts.update(func)
    cols = [parts[k].reshape(parts[k].shape[0] * parts[k].shape[1], -1) for k in names]
    return torch.cat(cols, dim=1)
