"""EKFAC (George et al. 2018): the KFAC eigenbasis with a diagonal refitted to the data.

With Q_A, Q_G the eigenvectors of the KFAC factors, S = (1/N) Σₙ Σ_d (Q_Gᵀ Gₙ,d Q_A)² (elementwise,
Gₙ,d the per-sample gradient matrix [∇W | ∇b]) and F_layer ≈ (Q_G ⊗ Q_A) diag(S) (Q_G ⊗ Q_A)ᵀ.
S is the Frobenius-optimal diagonal in that basis, so EKFAC is never further from F than KFAC.
"""

from __future__ import annotations

from ..engine import accumulate as acc
from .accumulator import LOCAL
from .base import BlockCurvature
from .blocks import EKronBlock
from .kfac import KFACAccumulator


class EKFACAccumulator(KFACAccumulator):
    """Two passes: KFAC's sums, then (after ``next_pass`` decomposes A and G) Σ (Q_Gᵀ ∇ₙ Q_A)² per layer."""

    needs_func = (True, False)

    @staticmethod
    def kron_storage(u) -> int:
        """The factors, their eigenvectors (as large again) and the O × I refitted scalings."""
        return 2 * (u.in_features**2 + u.out_features**2) + u.in_features * u.out_features

    @property
    def passes(self):  # no Kronecker layer: nothing to refit
        return 2 if self.kron_units else 1

    def __init__(self, plan, meta):
        super().__init__(plan, meta)
        self.bases: dict | None = None  # weight name -> (Q_A, Q_G), set between the passes

    def set_bases(self, bases: dict) -> None:
        self.bases = bases

    def next_pass(self, ops=LOCAL):
        sums = self._taken()
        f = self.factors(sums, self.n)
        eigs = ops.eigh([m for A, G in f.values() for m in (A, G)])
        self.set_bases({w: (eigs[2 * i][1], eigs[2 * i + 1][1]) for i, w in enumerate(f)})
        self._first = (self._other_blocks(sums, self.n), self.n)
        self._sums, self.n = {}, 0

    def _add(self, bs):
        if self.bases is None:
            return super()._add(bs)
        for u, a, g in bs.hook:
            if u.weight in self.bases:
                self._add_to(f"S:{u.weight}", acc.ekfac_sums(a, g, *self.bases[u.weight]))

    def scalings(self) -> dict:
        """weight name → S (means over this pass's samples)."""
        return {u.weight: self._sums[f"S:{u.weight}"] / self.n for u in self.kron_units}

    def finish(self, ops=LOCAL):
        if self.bases is None:  # a single pass (no Kronecker layer)
            return super().finish(ops)
        others, n1 = self._first
        s = self.scalings() if self.kron_units else {}
        info, blocks = self.info, []
        for u in self.kron_units:
            qa, qg = self.bases[u.weight]
            numels = self.numels(u.names)
            blocks.append(EKronBlock(u.names, numels, u.out_features, bool(u.bias), qa, qg, s[u.weight], u.transposed))
        return EKFAC(info, n1, self.meta.kind, self.meta.likelihood, self._ordered(blocks + others))


class EKFAC(BlockCurvature):
    """Eigenvalue-corrected Kronecker-factored Fisher."""

    structure = "ekfac"
    accumulator = EKFACAccumulator


EKFACAccumulator.curvature_class = EKFAC
