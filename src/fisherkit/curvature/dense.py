"""Dense Fisher: the full P × P matrix F = (1/N) Σₙ Σ_d gₙ,d gₙ,dᵀ (small models only)."""

from __future__ import annotations

import torch

from ..engine import accumulate as acc
from ..errors import FisherkitError
from .accumulator import LOCAL, Accumulator
from .base import DENSE_LIMIT, BlockCurvature
from .blocks import DenseBlock


def dense_fits(info, dtype: torch.dtype, max_memory: float) -> bool:
    """Whether a P × P matrix over ``info`` is allowed (P ≤ DENSE_LIMIT and within ``max_memory`` bytes)."""
    return info.size <= DENSE_LIMIT and info.size**2 * (torch.finfo(dtype).bits // 8) <= max_memory


class DenseAccumulator(Accumulator):
    """The Gram Σₙ Σ_d gₙ,d gₙ,dᵀ over all parameters. Linear-only models skip per-sample gradients
    (``engine.accumulate.gram_add_kron_``)."""

    @classmethod
    def storage(cls, plan, options):
        """The P × P Gram and its mirrored copy."""
        return 2 * plan.info.size**2

    @classmethod
    def check(cls, info, dtype, max_memory):
        if not dense_fits(info, dtype, max_memory):
            need = info.size**2 * (torch.finfo(dtype).bits // 8)
            raise FisherkitError(
                f"a dense Fisher of {info.size} parameters needs {need / 2**30:.2f} GiB "
                f"(limit: {DENSE_LIMIT} parameters, max_memory={max_memory / 2**30:.2f} GiB); "
                "use structure='kfac', 'diag', 'lowrank' or 'implicit'"
            )

    def _add(self, bs):
        gram = self._sums.get("gram")
        if gram is None:
            gram = self._sums["gram"] = torch.zeros(self.info.size, self.info.size, dtype=self.meta.dtype,
                                                    device=self.meta.device)
        if not acc.gram_add_kron_(bs, self.info, gram):
            u = acc.persample_flat(bs, self.info)
            gram.addmm_(u.T, u)

    def matrix(self) -> torch.Tensor:
        gram = self._taken().get("gram")
        if gram is None:  # no local batch (an idle rank before its reduction)
            return torch.zeros(self.info.size, self.info.size, dtype=self.meta.dtype, device=self.meta.device)
        return gram / max(self.n, 1) if not self.consume else gram.div_(max(self.n, 1))

    def finish(self, ops=LOCAL):
        return Dense(self.info, self.n, self.meta.kind, self.meta.likelihood,
                     [DenseBlock(self.info.names, self.info.numels, self.matrix())])


class Dense(BlockCurvature):
    """One dense block over all parameters; exact for every operation."""

    structure = "dense"
    accumulator = DenseAccumulator

    @property
    def matrix(self):
        return self.blocks[0].matrix
