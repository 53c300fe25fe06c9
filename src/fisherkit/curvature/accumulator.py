"""What every structure's accumulator shares: running sums over batches, their count, and the hooks
that the front-ends (``fisher``, the optimizer, distributed reduction) call.

A structure is built from *sums* over samples S = Σₙ Σ_d (…)ₙ,d in its own layout plus the
sample count N, and F = S / N. The life of an accumulator::

    acc = KFAC.accumulator(plan, meta)           # plan: engine.units.Plan (settled)
    for bs in engine.gather(...): acc.add(bs)     # per-batch statistics from the engine
    acc.load_sums(*reduce(acc.sums(), acc.n))     # optional: all-reduce over ranks
    acc.next_pass(ops)                            # only for multi-pass structures (EKFAC)
    F = acc.finish(ops)                           # -> Curvature

``ops`` carries the linear algebra a finish may need (``eigh`` of several matrices, ``top`` k
eigenpairs), so that distributed training can split or broadcast it without patching anything.
An optimizer keeps a moving average instead: ``running.ema(decay, batch)`` on accumulators
normalised to means (``scale_``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import NonFiniteError
from .linalg import safe_eigh


def _local_eigh(mats):
    return [safe_eigh(m) for m in mats]


def _local_top(m, k):
    vals, vecs = safe_eigh(m)
    return [vals.flip(0)[:k].contiguous(), vecs.flip(1)[:, :k].contiguous()]


@dataclass
class LinalgOps:
    """The decompositions a finish may need; distributed training passes split/broadcast versions."""

    eigh: callable = field(default=_local_eigh)  # list of symmetric matrices -> list of (values, vectors)
    top: callable = field(default=_local_top)  # (matrix, k) -> [values (k, descending), vectors (n×k)]


LOCAL = LinalgOps()


@dataclass
class Meta:
    """What a finished Curvature records besides its tensors."""

    kind: str
    likelihood: dict
    dtype: torch.dtype = torch.float32
    device: torch.device | str = "cpu"
    options: dict = field(default_factory=dict)  # structure-specific (rank, max_memory, ...)


class Accumulator:
    """Running sums ``S`` (a dict of tensors) of one structure's statistics and their count ``n``."""

    passes = 1  # passes over the data (EKFAC: 2, the second in the eigenbasis of the first)
    needs_func = (True,)  # per pass: whether the torch.func per-sample gradients are needed

    def __init__(self, plan, meta: Meta):
        self.plan, self.info, self.meta = plan, plan.info, meta
        self._sums: dict[str, torch.Tensor] = {}
        self.n = 0
        self.consume = True  # finish may free and overwrite the sums (fisher(); an optimizer sets False)

    # ---- filled by each structure ---------------------------------------------------------
    @classmethod
    def storage(cls, plan, options: dict) -> int:
        """Number of floats this structure holds at its peak (running sums and the finished matrix), before
        any data is read: ``curvature.memory`` turns it into bytes and refuses what cannot fit. Diagonal:
        the P sums and the flat P-vector."""
        return 2 * plan.info.size

    def _add(self, bs) -> None:
        raise NotImplementedError

    def finish(self, ops: LinalgOps = LOCAL):
        raise NotImplementedError

    # ---- shared -----------------------------------------------------------------------------
    def add(self, bs) -> None:
        """Add one ``engine.collect.BatchStats`` (its samples, all its directions).

        The running sums are checked after every batch (one reduction each): statistics that overflow
        (inputs of 1e20 behind a saturating activation, say) are named with their batch and layer here,
        not found later as a NaN trace or an eigendecomposition that fails.
        """
        self.n += bs.n
        self._add(bs)
        if not self._sums or bool(torch.isfinite(sum(t.sum() for t in self._sums.values()))):
            return  # one reduction per sum and a single check per batch
        for key, t in self._sums.items():
            if not bool(torch.isfinite(t).all()):
                raise NonFiniteError(
                    f"the Fisher statistics of {key.split(':', 1)[-1]!r} ({key}) are not finite after batch {bs.index}: "
                    "the inputs of that batch are too large or not finite for this model (check the data, or "
                    "scale it); nothing was returned"
                )

    def sums(self) -> dict[str, torch.Tensor]:
        """The running sums (what distributed training all-reduces)."""
        return self._sums

    def load_sums(self, sums: dict[str, torch.Tensor], n: int) -> None:
        """Replace the sums and count (e.g. by their all-reduced totals)."""
        self._sums, self.n = dict(sums), int(n)

    def next_pass(self, ops: LinalgOps = LOCAL) -> None:
        """Between passes of a multi-pass structure."""

    def scale_(self, a: float) -> "Accumulator":
        """In place: S ← a·S (``scale_(1/n)`` turns sums into means)."""
        for t in self._sums.values():
            t.mul_(a)
        return self

    def ema(self, decay: float, batch: "Accumulator") -> None:
        """self ← decay·self + (1 − decay)·batch for every statistic (the first call copies ``batch``).

        Both hold means (see ``scale_``); this is the moving average an optimizer keeps.
        """
        for k, v in batch.sums().items():
            old = self._sums.get(k)
            self._sums[k] = v.clone() if old is None else decay * old + (1 - decay) * v
        self.n = 1

    def _taken(self) -> dict[str, torch.Tensor]:
        """The sums for ``finish`` to use up: the dict itself, or copies when ``consume`` is False."""
        if self.consume:
            return self._sums
        return {k: v.clone() for k, v in self._sums.items()}

    def _add_to(self, key: str, val: torch.Tensor) -> None:
        prev = self._sums.get(key)
        if prev is None:
            self._sums[key] = val
        else:
            prev.add_(val)
