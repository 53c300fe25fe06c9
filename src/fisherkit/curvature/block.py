"""Block-diagonal Fisher: a dense block per layer (the weight and bias of one module together).

Its accumulator is also the base of KFAC's and EKFAC's: hooked Linear/Conv layers are either dense
blocks (here) or Kronecker factors (KFAC), every other module's parameters are one dense block per
module, and a block over more than ``DENSE_BLOCK_LIMIT`` parameters keeps only its diagonal.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..engine import accumulate as acc
from .accumulator import LOCAL, Accumulator
from .base import BlockCurvature
from .blocks import DENSE_BLOCK_LIMIT, DenseBlock, DiagBlock


def module_groups(names: list[str]) -> list[list[str]]:
    """Group parameter names by owning module (prefix before the last dot), keeping order."""
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(n.rsplit(".", 1)[0] if "." in n else "", []).append(n)
    return list(groups.values())


class BlockAccumulator(Accumulator):
    """Per group of parameters the Gram Σₙ Σ_d gₙ,d gₙ,dᵀ of its per-sample gradients (dense block),
    or Σ g² (diagonal block) above ``DENSE_BLOCK_LIMIT`` parameters."""

    kron = False  # KFAC: hooked layers become Kronecker factors instead of dense blocks

    def __init__(self, plan, meta):
        super().__init__(plan, meta)
        self.kron_units = list(plan.hook_units) if self.kron else []
        self._kron_ids = {id(u) for u in self.kron_units}
        self.groups = ([] if self.kron else [u.names for u in plan.hook_units]) + module_groups(plan.other_names)
        self.big = [g for g in self.groups if sum(self.numels(g)) > DENSE_BLOCK_LIMIT]
        if meta.options.get("fallback") == "diag":  # the optimizer: a diagonal for what is not factored
            self.big = list(self.groups)

    @classmethod
    def storage(cls, plan, options):
        """A g × g block per layer of g ≤ DENSE_BLOCK_LIMIT parameters (g above: its diagonal); KFAC's
        layers I² + O² each (``kron_storage``). Sums and finished blocks: twice that."""
        kron = list(plan.hook_units) if cls.kron else []
        groups = ([] if cls.kron else [u.names for u in plan.hook_units]) + module_groups(plan.other_names)
        diag_only = options.get("fallback") == "diag"
        total = sum(cls.kron_storage(u) for u in kron)
        for g in groups:
            k = sum(plan.info.numels[plan.info.index(x)] for x in g)
            total += k if diag_only or k > DENSE_BLOCK_LIMIT else k * k
        return 2 * total

    @staticmethod
    def kron_storage(u) -> int:
        """Floats of one Kronecker layer's factors A (I × I) and G (O × O)."""
        return u.in_features**2 + u.out_features**2

    def numels(self, names) -> list[int]:
        """Sizes of the named parameters."""
        return [self.info.numels[self.info.index(x)] for x in names]

    def _add(self, bs):
        for u, a, g in bs.hook:
            if id(u) in self._kron_ids:
                acc.kfac_add(a, g, self._sums, f"A:{u.weight}", f"G:{u.weight}", with_a=bs.first,
                             approx=self.meta.options.get("kfac_approx", "expand"),
                             a_scale=bs.n / a.shape[0] if bs.first and a.shape[0] else 1.0)
        # once per batch; KFAC's own layers are Kronecker factors, so their diagonal is not needed
        d = acc.diag_sums(replace(bs, hook=[]) if self.kron else bs) if self.big else None
        for grp in self.groups:
            if grp in self.big:
                for x in grp:
                    self._add_to(f"d:{x}", d[x].reshape(-1))
            else:
                acc.gram_add_(self._sums, "g:" + grp[0], acc.persample_flat(bs, self.info, grp))  # upper triangle

    def _other_blocks(self, sums, n) -> list:
        blocks = []
        for grp in self.groups:
            numels = self.numels(grp)
            if grp in self.big:
                blocks.append(DiagBlock(grp, numels, torch.cat([sums[f"d:{x}"] for x in grp]) / n))
            else:
                blocks.append(DenseBlock(grp, numels, acc.symmetrize(sums["g:" + grp[0]]) / n))
        return blocks

    def _layer_blocks(self, sums, n, ops) -> list:
        return []

    def _ordered(self, blocks):
        out = []
        for x in self.info.names:  # blocks in parameter order
            out += [b for b in blocks if b.names[0] == x]
        return out

    def finish(self, ops=LOCAL):
        sums = self._taken()
        blocks = self._layer_blocks(sums, self.n, ops) + self._other_blocks(sums, self.n)
        return self.curvature_class(self.info, self.n, self.meta.kind, self.meta.likelihood, self._ordered(blocks))


class BlockDiagonal(BlockCurvature):
    """Dense per layer, zero between layers; blocks too large for dense storage are diagonal."""

    structure = "block"
    accumulator = BlockAccumulator


BlockAccumulator.curvature_class = BlockDiagonal
