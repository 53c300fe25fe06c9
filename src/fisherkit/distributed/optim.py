"""``distribute_optimizer``: NaturalGradient / Preconditioner data-parallel over a process group.

The optimizer gathers its curvature from each rank's own mini-batch; the hooks installed here make
it the curvature of the global batch (all-reduced sums with their counts), split the inverse
refreshes over the ranks and broadcast them. Only instance attributes of the given optimizer are
replaced; the classes in ``fisherkit.optim`` are untouched.
"""

from __future__ import annotations

import torch

from ..curvature.implicit import Implicit
from ..errors import FisherkitError
from . import (DistributedImplicit, _dist, active_group, all_reduce_sums, eigh_split, rank_seed,
               tensor_digest)


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
    if not (hasattr(pre, "states") and hasattr(pre, "_ingest") and hasattr(pre, "compute")):
        raise FisherkitError("distribute_optimizer needs a fisherkit NaturalGradient or Preconditioner; "
                             f"got {type(optimizer).__name__}")
    group = active_group(process_group)
    if group is None or _dist().get_world_size(group) == 1:
        return optimizer
    if getattr(pre, "_data_parallel", None) is None:  # idempotent: Preconditioner and optimizer may both ask
        pre._data_parallel = _DataParallelCurvature(pre, group, split_inverses, average_gradients)
    else:  # NaturalGradient distributes itself at construction; a later explicit call sets the options
        pre._data_parallel.split, pre._data_parallel.average = split_inverses, average_gradients
    if optimizer is not pre and not getattr(optimizer, "_data_parallel_step", False):
        optimizer._data_parallel_step = True
        plain_step = optimizer.step

        def step(closure=None):
            if closure is None:
                return plain_step()

            def mean_closure():
                loss = torch.as_tensor(closure()).detach().to(torch.float64).reshape(1).clone()
                red, _ = all_reduce_sums({"loss": loss}, 1, group, "NaturalGradient loss")
                return red["loss"][0] / _dist().get_world_size(group)

            return plain_step(mean_closure)

        optimizer.step = step
    return optimizer


class _DataParallelCurvature:
    """The hooks ``distribute_optimizer`` puts on one ``Preconditioner`` (instance attributes only)."""

    def __init__(self, pre, group, split, average_gradients):
        self.pre, self.group, self.split, self.average = pre, group, split, average_gradients
        self.pending: list = []
        self.fresh, self.scalings = False, None
        if pre.kind == "mc":
            pre.generator.manual_seed(rank_seed(pre.generator.initial_seed(), group))
        build, ingest, compute = pre._build, pre._ingest, pre.compute

        def build_(units, func_names):
            build(units, func_names)
            self.patch_states()

        def ingest_():
            self.pending = []
            b = ingest()
            self.flush()
            return b

        def compute_(grads):
            self.fresh, self.scalings = False, None
            if self.average:
                red, _ = all_reduce_sums({k: g.detach() for k, g in grads.items()}, 1, group, "gradient average")
                grads = {k: red[k] / _dist().get_world_size(group) for k in grads}
            return compute(grads)

        pre._build, pre._ingest, pre.compute = build_, ingest_, compute_
        if pre.structure == "implicit":
            operator = pre._fvp_operator
            pre._fvp_operator = lambda b: self.implicit(operator(b), b.n)
        self.patch_states()

    def patch_states(self):
        from ..optim.curvature_state import DenseState, DiagState, EKronState, KronState

        for st in self.pre.states:
            if getattr(st, "_dp", False):
                continue
            st._dp = True
            if isinstance(st, KronState):
                st.update = lambda a, g, n, ema, st=st: self.record_kron(st, a, g, n, ema)
                if isinstance(st, EKronState):
                    st.fit_scaling = lambda ema, st=st: self.fit_scaling(st, ema)
            elif isinstance(st, DiagState):
                st.update_sums = lambda sums, n, ema, st=st, f=st.update_sums: self.pending.append(
                    ("diag", st, dict(sums), n, ema, f))
            elif isinstance(st, DenseState):
                st.update_gram = lambda U, n, ema, st=st: self.pending.append(("dense", st, {"F": U.T @ U}, n, ema))
            if isinstance(st, (KronState, DenseState)):  # all at once: fit_scaling needs every new basis
                st.refresh = self.refresh_all

    def record_kron(self, st, a, g, n, ema):
        from ..engine.accumulate import kfac_sums
        from ..optim.curvature_state import EKronState

        A, G = kfac_sums(a, g)
        self.pending.append(("kron", st, {"A": A, "G": G}, n, ema))
        if isinstance(st, EKronState):
            st._last = (a, g, n)

    def flush(self):
        """One all-reduce for every statistic of this step, then the moving averages with the global N."""
        from ..optim.curvature_state import _ema

        if not self.pending:
            return
        sums = {f"{i}|{k}": t for i, rec in enumerate(self.pending) for k, t in rec[2].items()}
        red, n = all_reduce_sums(sums, self.pending[0][3], self.group, "NaturalGradient curvature statistics")
        for i, (kind, st, parts, _, ema, *orig) in enumerate(self.pending):
            tot = {k: red[f"{i}|{k}"] for k in parts}
            if kind == "diag":
                orig[0](tot, n, ema)
            else:
                for k, t in tot.items():
                    st.t[k] = _ema(st.t[k], t / n, ema)
        self.pending = []

    def refresh_all(self):
        """At the first refresh call of a step: every eigendecomposition, split over the ranks."""
        from ..optim.curvature_state import DenseState, EKronState

        if self.fresh:
            return
        self.fresh = True
        states = [st for st in self.pre.states if getattr(st, "refresh", None) == self.refresh_all]
        mats = [m for st in states for m in ((st.t["F"],) if isinstance(st, DenseState) else (st.t["A"], st.t["G"]))]
        eigs = iter(eigh_split(mats, self.group, split=self.split, what="NaturalGradient inverse refresh"))
        for st in states:
            # contiguous, like the optimizer's own refresh (its checkpoints resume bit-exactly)
            if isinstance(st, DenseState):
                st.t["vals"], st.t["vecs"] = (t.contiguous() for t in next(eigs))
            else:
                st.t["la"], st.t["qa"] = (t.contiguous() for t in next(eigs))
                st.t["lg"], st.t["qg"] = (t.contiguous() for t in next(eigs))
                if isinstance(st, EKronState):
                    st._basis_new = True

    def fit_scaling(self, st, ema):
        """EKronState.fit_scaling with the scalings Σₙ (Q_Gᵀ ∇ₙ Q_A)² summed over the ranks' batches."""
        from ..engine.accumulate import ekfac_sums
        from ..optim.curvature_state import EKronState

        if self.scalings is None:  # first call of this step: every layer's sums in one all-reduce
            sums, n = {}, 0
            for i, s in enumerate(self.pre.states):
                if isinstance(s, EKronState) and getattr(s, "_last", None) is not None:
                    a, g, n = s._last
                    sums[str(i)] = ekfac_sums(a, g, s.t["qa"], s.t["qg"])
            red, total = all_reduce_sums(sums, n, self.group, "NaturalGradient EKFAC scalings") if sums else ({}, 1)
            self.scalings = {int(k): v / total for k, v in red.items()}
        prior = st.t["lg"][:, None] * st.t["la"][None, :]
        s_batch = self.scalings.get(self.pre.states.index(st))
        if s_batch is None:
            if st._basis_new or st.t["S"] is None:
                st.t["S"], st._basis_new = prior, False
            return
        if st._basis_new or st.t["S"] is None:
            st.t["S"], st._basis_new = ema * prior + (1 - ema) * s_batch, False
        else:
            st.t["S"] = ema * st.t["S"] + (1 - ema) * s_batch
        st._last = None

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
