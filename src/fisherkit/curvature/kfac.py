"""KFAC: per Linear/Conv layer, F_layer ≈ G ⊗ A (Martens & Grosse 2015; Grosse & Martens 2016).

A = (1/N) Σₙ (1/T) Σ_t ã ãᵀ over layer inputs with a 1 appended for the bias (T shared positions,
e.g. conv patches or tokens); G = (1/N) Σₙ Σ_d Σ_t g gᵀ over output gradients of every backward
direction d. F_layer acts on the combined matrix M = [W | b] as M ↦ G M A. Solving goes through the
eigen-decompositions of A and G: (G ⊗ A + δI)⁻¹ = (Q_G ⊗ Q_A) diag(1/(λ_G λ_Aᵀ + δ)) (Q_G ⊗ Q_A)ᵀ,
so no P × P matrix is formed. Other layers are dense blocks (small) or diagonal (large).
"""

from __future__ import annotations

import os
import sys
import warnings

import torch

from ..engine import accumulate as acc
from ..errors import FisherkitError
from .base import BlockCurvature
from .block import BlockAccumulator
from .blocks import KronBlock


def _callers_level() -> int:
    """The ``stacklevel`` that names the first frame outside fisherkit (the user's call), however deep
    the call arrived (fisher -> EKFAC -> KFAC accumulators, EWC -> fisher, ...)."""
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame, level = sys._getframe(1), 1  # the frame that calls warnings.warn is level 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(pkg):
        frame, level = frame.f_back, level + 1
    return level


class KFACAccumulator(BlockAccumulator):
    """Σ ã ãᵀ / T and Σ g gᵀ per hooked layer (symmetric products, upper block triangle until
    ``finish`` mirrors them); the other parameters as in ``BlockAccumulator``."""

    kron = True

    def __init__(self, plan, meta):
        super().__init__(plan, meta)
        limit = meta.options.get("max_memory")
        if limit is not None:  # before any work: a factor that cannot fit is refused with its numbers
            item = torch.finfo(meta.dtype).bits // 8 if meta.dtype.is_floating_point else 4
            for u in self.kron_units:
                n = max(u.in_features, u.out_features)
                if n * n * item > limit:
                    raise FisherkitError(
                        f"{self.curvature_class.structure}: layer {u.module_name!r} needs a {n}×{n} Kronecker factor "
                        f"({n * n * item / 2**30:.2f} GiB) above max_memory={limit / 2**30:.2f} GiB; use "
                        "structure='diag', leave the layer out with params= (e.g. an LM head over a large "
                        "vocabulary), or raise max_memory"
                    )
        if plan.other_names and meta.options.get("warn", True):
            warnings.warn(
                f"{self.curvature_class.structure}: no Kronecker factorisation for {plan.describe_fallback()}; "
                "these parameters fall back to a dense block (small) or a diagonal (large)",
                stacklevel=_callers_level(),
            )

    def factors(self, sums, n) -> dict:
        """weight name → (A, G) means, mirrored; pops them from ``sums`` (freed layer by layer)."""
        out = {}
        for u in self.kron_units:
            A = acc.symmetrize(sums.pop(f"A:{u.weight}")).div_(n)
            G = acc.symmetrize(sums.pop(f"G:{u.weight}")).div_(n)
            out[u.weight] = (A, G)
        return out

    def _kron(self, u, A, G):
        return KronBlock(u.names, self.numels(u.names), u.out_features, bool(u.bias), A, G, u.transposed)

    def _layer_blocks(self, sums, n, ops):
        f = self.factors(sums, n)
        return [self._kron(u, *f[u.weight]) for u in self.kron_units]


class KFAC(BlockCurvature):
    """Kronecker-factored Fisher."""

    structure = "kfac"
    accumulator = KFACAccumulator

    def factors(self) -> dict[str, tuple]:
        """Layer weight name → (A, G) for every Kronecker block."""
        return {b.names[0]: (b.A, b.G) for b in self.blocks if b.kind == "kron"}


KFACAccumulator.curvature_class = KFAC
