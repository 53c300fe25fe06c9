"""Structured pruning: whole output rows of a layer (neurons, conv channels, or groups of
``group_size`` consecutive rows such as attention heads of a projection); biases are kept.

* ``magnitude``: a unit's cost is ½‖W_S‖²; ``obd``: ½ Σ F_qq w_q² over the unit; no updates.
* ``kfac``: OBS across rows through G. With F = G ⊗ A on M = [W | b], removing rows S (all their
  weight columns; biases free) costs ½ tr((G⁻¹_SS)⁻¹ W_S B W_Sᵀ) with B = ((A⁻¹)_WW)⁻¹, and the best
  update is ΔM = −G⁻¹[:, S] (G⁻¹_SS)⁻¹ W_S B E_Wᵀ A⁻¹ — the other rows of the layer compensate in
  proportion to their output correlation G⁻¹[o, S]. Units are removed greedily with the downdate
  G⁻¹ ← G⁻¹ − G⁻¹[:, S](G⁻¹_SS)⁻¹G⁻¹[S, :], which keeps the sequence the joint optimum.
"""

from __future__ import annotations

import torch

from ._checks import PruneError
from .groups import _param
from .obs import damped_inverse


class Chain:
    """One layer's units in removal order with non-decreasing cumulative costs, and a way to apply k removals."""

    def __init__(self, name, unit_size, order, costs, apply):
        self.name, self.unit_size, self.order, self.apply = name, unit_size, order, apply
        self.costs = torch.cummax(costs, 0).values if costs.numel() else costs


def _units(O, group_size, name):
    if O % group_size:
        raise PruneError(f"{name} has {O} output rows, not a multiple of group_size={group_size}")
    return O // group_size


def static_chain(model, name, hdiag, group_size, old):
    """Magnitude (hdiag None) or OBD: fixed unit costs, removal = zeroing the rows."""
    p = _param(model, name)
    W = p.detach().reshape(p.shape[0], -1).to(torch.float64)
    h = torch.ones_like(W) if hdiag is None else hdiag.reshape(W.shape).to(torch.float64)
    U = _units(W.shape[0], group_size, name)
    cost = (0.5 * h * W**2).reshape(U, -1).sum(1)
    if old is not None:  # units already fully pruned go first
        dead = (~old.reshape(U, -1)).all(1)
        cost = torch.where(dead, torch.full_like(cost, -float("inf")), cost)
    order = torch.argsort(cost, stable=True)

    def apply(k):
        rows = (order[:k, None] * group_size + torch.arange(group_size)).reshape(-1)
        with torch.no_grad():
            p.view(p.shape[0], -1)[rows] = 0
        return rows

    return Chain(name, W.shape[1] * group_size, order, cost[order], apply)


def kfac_chain(model, block, group_size, damping, old):
    """Greedy OBS over units of rows through G (see module docstring)."""
    names = block.names
    name = names[0]
    parts = {n: _param(model, n).detach().reshape(-1) for n in names}
    M0 = block.to_matrix(parts).to(torch.float64)
    O, I = M0.shape
    n_w = I - (1 if block.has_bias else 0)
    U = _units(O, group_size, name)
    Ainv = damped_inverse(block.A, damping)
    B = torch.linalg.inv(Ainv[:n_w, :n_w])
    Z_of = lambda Ws: Ws @ B @ Ainv[:n_w, :]  # noqa: E731  rows z = W_S B E_Wᵀ A⁻¹ (length I)
    Ginv0 = damped_inverse(block.G, damping)
    rows_of = lambda u: torch.arange(u * group_size, (u + 1) * group_size)  # noqa: E731
    dead0 = (~old.reshape(U, -1)).all(1) if old is not None else torch.zeros(U, dtype=torch.bool)

    def run(order=None, k=None):
        M, Ginv = M0.clone(), Ginv0.clone()
        gone = torch.zeros(U, dtype=torch.bool)
        seq, costs = [], []
        for t in range(U if k is None else k):
            if order is None:
                best, best_c = None, float("inf")
                for u in range(U):
                    if gone[u]:
                        continue
                    S = rows_of(u)
                    GS = Ginv[S][:, S]
                    c = 0.5 * float(torch.trace(torch.linalg.solve(GS, M[S, :n_w] @ B @ M[S, :n_w].T)))
                    c = -float("inf") if dead0[u] else c
                    if c < best_c or best is None:
                        best, best_c = u, c
                u = best
                costs.append(best_c)
            else:
                u = int(order[t])
            S = rows_of(u)
            GS = Ginv[S][:, S]
            coef = torch.linalg.solve(GS, Ginv[S, :]).T  # G⁻¹[:, S] (G⁻¹_SS)⁻¹  [O, |S|]
            M = M - coef @ Z_of(M[S, :n_w])
            M[S, :n_w] = 0.0
            Ginv = Ginv - coef @ Ginv[S, :]
            gone[u] = True
            seq.append(u)
        return M, torch.tensor(seq, dtype=torch.long), torch.tensor(costs, dtype=torch.float64)

    _, order, costs = run()

    def apply(k):
        M, _, _ = run(order, k)
        new = block.from_matrix(M)
        with torch.no_grad():
            for n in names:
                q = _param(model, n)
                q.copy_(new[n].reshape(q.shape).to(q.dtype))
        return (order[:k, None] * group_size + torch.arange(group_size)).reshape(-1)

    # the unit costs are in the loss of one layer; G already carries the output scale (like the per-weight case)
    return Chain(name, n_w * group_size, order, costs, apply)


def choose_counts(chains, sparsity, scope):
    """Units to remove per chain: the cheapest over all chains (global, removed weights nearest the target) or per layer."""
    if scope == "layer":
        return [round(sparsity * len(c.order)) for c in chains]
    total = sum(len(c.order) * c.unit_size for c in chains)
    target = sparsity * total
    cand = [(float(c.costs[t]), i, t) for i, c in enumerate(chains) for t in range(len(c.order))]
    cand.sort(key=lambda x: (x[0], x[1], x[2]))
    counts, removed, best, best_k = [0] * len(chains), 0, abs(target), 0
    for k, (_, i, _) in enumerate(cand, 1):
        removed += chains[i].unit_size
        if abs(removed - target) < best:
            best, best_k = abs(removed - target), k
    for _, i, _ in cand[:best_k]:
        counts[i] += 1
    return counts


def prune_rows(model, F, method, names, sparsity, scope, group_size, damping, old):
    """Structured one-shot pruning in place; returns the new masks (True = kept)."""
    if method == "woodfisher":
        raise PruneError("structured pruning supports magnitude, obd and kfac (OBS across rows through G); "
                         "WoodFisher's blocks hold no cross-row information — use method='kfac'")
    if method == "magnitude":
        chains = [static_chain(model, n, None, group_size, old.get(n)) for n in names]
    elif method == "obd":
        d = F.unflatten(F.diag())
        chains = [static_chain(model, n, d[n], group_size, old.get(n)) for n in names]
    else:
        kron = {b.names[0]: b for b in F.blocks if b.kind == "kron"}
        missing = [n for n in names if n not in kron]
        if missing:
            raise PruneError(f"method='kfac' needs a Kronecker block for {missing}")
        chains = [kfac_chain(model, kron[n], group_size, damping, old.get(n)) for n in names]
    counts = choose_counts(chains, sparsity, scope)
    out = {}
    for c, k in zip(chains, counts):
        rows = c.apply(k)
        p = _param(model, c.name)
        keep = torch.ones(p.shape[0], p[0].numel(), dtype=torch.bool)
        keep[rows] = False
        out[c.name] = keep.reshape(p.shape)
    return out
