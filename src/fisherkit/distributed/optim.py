"""``distribute_optimizer``: NaturalGradient / Preconditioner data-parallel over a process group.

The optimizer gathers its curvature from each rank's own mini-batch. ``DataParallel`` is the
configuration it is handed (``pre.parallel``): ``reduce`` all-reduces the accumulator sums with
their counts (the same ``all_reduce_sums`` that ``fk.fisher`` uses), ``ops`` splits the
eigendecompositions of an inverse refresh over the ranks and broadcasts them, ``implicit`` makes a
batch Fisher-vector product global, and ``mean_closure`` averages the loss a closure returns.
The optimizer calls these at its own fixed points; nothing of it is replaced or patched.
"""

from __future__ import annotations

import torch

from ..curvature.accumulator import LinalgOps
from ..curvature.implicit import Implicit
from ..errors import FisherkitError
from . import (DistributedImplicit, _dist, active_group, all_reduce_sums, eigh_split, rank_seed, tensor_digest,
               top_eigenpairs)


class DataParallel:
    """The collectives a ``Preconditioner`` uses under ``torch.distributed`` (see the module docstring)."""

    def __init__(self, group, split_inverses: bool = True, average_gradients: bool = False):
        self.group, self.split, self.average = group, split_inverses, average_gradients

    @property
    def world(self) -> int:
        return _dist().get_world_size(self.group)

    def reduce(self, sums, n, what):
        """(Σ_r S_r, Σ_r N_r): the statistics of the global batch."""
        return all_reduce_sums(sums, n, self.group, what)

    @property
    def ops(self) -> LinalgOps:
        group, split = self.group, self.split
        return LinalgOps(eigh=lambda mats: eigh_split(mats, group, split=split, what="NaturalGradient inverse refresh"),
                         top=lambda m, k: top_eigenpairs(m, k, group))

    def average_gradients(self, grads):
        """``average_gradients=True`` (no DDP): p.grad averaged over the ranks first."""
        if not self.average:
            return grads
        red, _ = all_reduce_sums({k: g.detach() for k, g in grads.items()}, 1, self.group, "gradient average")
        return {k: red[k] / self.world for k in grads}

    def mean_closure(self, closure):
        """A closure returning the mean of the ranks' losses (for the Levenberg–Marquardt ratio)."""
        def mean():
            loss = torch.as_tensor(closure()).detach().to(torch.float64).reshape(1).clone()
            red, _ = all_reduce_sums({"loss": loss}, 1, self.group, "NaturalGradient loss")
            return red["loss"][0] / self.world

        return mean

    def implicit(self, op, n_local):
        """The batch Fisher-vector product of the global batch: Σ_r B_r F_r v / Σ_r B_r."""
        _, total = all_reduce_sums({}, n_local, self.group, "NaturalGradient implicit batch size")
        group = self.group

        def product(v):
            red, _ = all_reduce_sums({"fv": op.mv(v) * n_local}, n_local, group, "NaturalGradient implicit product",
                                     check=tensor_digest(v))
            return red["fv"] / total

        return DistributedImplicit.wrap(Implicit(op.info, total, op.kind, op.likelihood, product, op.dtype, op.device),
                                        group)


def distribute_optimizer(optimizer, process_group=None, split_inverses: bool = True,
                         average_gradients: bool = False):
    """Make a ``NaturalGradient`` (or a ``Preconditioner``) data-parallel over a process group.

    Each rank feeds its own mini-batch of B_r samples through the model (DistributedDataParallel
    averages the gradients); the optimizer's curvature then uses the global batch of Σ_r B_r:

    * KFAC / EKFAC factors A = Σ ã ãᵀ, G = Σ g gᵀ, diagonal and dense sums, and the EKFAC
      scalings Σ (Q_Gᵀ ∇ₙ Q_A)² are all-reduced, with their sample counts, before the moving
      average: exactly what one process computes on the concatenated batch.
    * ``split_inverses=True``: the eigendecompositions at each inverse refresh are assigned to
      ranks (largest first, to the least-loaded rank) and broadcast, so R ranks share the O(n³)
      work (as KAISA does). ``False``: every rank decomposes everything itself, no communication.
    * ``structure="implicit"``: each CG product all-reduces the ranks' Fisher-vector products.
    * ``kind="mc"``: each rank draws its labels from its own stream (seed mixed with the rank).
    * ``step(closure)`` (adaptive damping) sees the mean of the ranks' losses.
    * ``average_gradients=True``: average ``p.grad`` over the ranks first (when not using DDP).

    Example: ``opt = distribute_optimizer(NaturalGradient(model, structure="kfac"))`` and train
    ``DDP(model)``. Single-process (or a group of one), ``optimizer`` is returned unchanged.
    """
    pre = getattr(optimizer, "pre", optimizer)
    if not (hasattr(pre, "parallel") and hasattr(pre, "compute") and hasattr(pre, "generator")):
        raise FisherkitError("distribute_optimizer needs a fisherkit NaturalGradient or Preconditioner; "
                             f"got {type(optimizer).__name__}")
    group = active_group(process_group)
    if group is None or _dist().get_world_size(group) == 1:
        return optimizer
    if pre.parallel is None:  # idempotent: NaturalGradient distributes itself; a later call sets the options
        pre.parallel = DataParallel(group, split_inverses, average_gradients)
        if pre.kind == "mc":
            pre.generator.manual_seed(rank_seed(pre.generator.initial_seed(), group))
    else:
        pre.parallel.split, pre.parallel.average = split_inverses, average_gradients
    return optimizer
