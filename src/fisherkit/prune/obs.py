"""Optimal Brain Surgeon on a quadratic model of the loss: the maths every Fisher method shares.

Near a trained θ the loss rises by δL ≈ ½ δᵀ H δ (H a Fisher block; the gradient is ~0). Removing
weight q means the constraint δ_q = −w_q; the best δ under it (Hassibi & Stork 1993) is

    δ = −(w_q / [H⁻¹]_qq) H⁻¹ e_q,        δL = w_q² / (2 [H⁻¹]_qq)            (the saliency)

and removing a set Q at once: δ = −H⁻¹E_Q (E_Qᵀ H⁻¹ E_Q)⁻¹ w_Q, δL = ½ w_Qᵀ (E_Qᵀ H⁻¹ E_Q)⁻¹ w_Q.
Removing weights one at a time with the update and the rank-one downdate
H⁻¹ ← H⁻¹ − H⁻¹e_q e_qᵀH⁻¹ / [H⁻¹]_qq (the inverse of H on the remaining coordinates) reaches that
same joint optimum for the removed set, and greedily picks the cheapest weight at each step (the
OBC / SparseGPT route, Frantar & Alistarh 2022). ``greedy`` does this for many independent groups
at once (rows of a layer, blocks of a WoodFisher), batched.
"""

from __future__ import annotations

import torch


def obs_single(Hinv: torch.Tensor, w: torch.Tensor, q: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(δ, δL) for removing coordinate ``q`` of ``w`` under the quadratic ½δᵀHδ, given H⁻¹."""
    d = Hinv[q, q]
    delta = -(w[q] / d) * Hinv[:, q]
    return delta, w[q] ** 2 / (2 * d)


def obs_set(Hinv: torch.Tensor, w: torch.Tensor, Q) -> tuple[torch.Tensor, torch.Tensor]:
    """(δ, δL) for removing the coordinates ``Q`` of ``w`` jointly, given H⁻¹."""
    Q = torch.as_tensor(Q, dtype=torch.long)
    S = Hinv[Q][:, Q]
    z = torch.linalg.solve(S, w[Q])
    return -Hinv[:, Q] @ z, 0.5 * torch.dot(w[Q], z)


def damped_inverse(H: torch.Tensor, damping: float) -> torch.Tensor:
    """(H + damping · mean(diag H) · I)⁻¹ for a batch of symmetric PSD matrices [..., m, m], in float64."""
    H = H.to(torch.float64)
    m = H.shape[-1]
    scale = H.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-300)
    eye = torch.eye(m, dtype=H.dtype, device=H.device)
    Hd = 0.5 * (H + H.transpose(-1, -2)) + (damping * scale)[..., None, None] * eye
    L, info = torch.linalg.cholesky_ex(Hd)
    if bool((info != 0).any()):  # numerically singular despite damping: a tiny extra jitter
        Hd = Hd + (1e-10 * scale.clamp_min(1e-30))[..., None, None] * eye
        L = torch.linalg.cholesky(Hd)
    return torch.cholesky_inverse(L)


def greedy(Hinv: torch.Tensor, w: torch.Tensor, prunable: torch.Tensor, forced: torch.Tensor | None = None,
           steps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy OBS in ``g`` independent groups: the removal order and each step's loss increase.

    Args:
        Hinv: [g, m, m] inverses of the groups' curvature blocks (float64; not modified).
        w: [g, m] weights; prunable: [g, m] bool (False: never removed, but updated — e.g. a bias).
        forced: [g, m] bool, removed first at no cost (weights already pruned in an earlier step).
        steps: how many removals per group to compute (default: every prunable coordinate).

    Returns ``order`` [g, steps] (coordinate removed at each step, −1 when none is left) and
    ``increase`` [g, steps] (w_q²/(2[H⁻¹]_qq) at that step; −inf for forced, +inf when none is left).
    """
    Hinv, w = Hinv.clone(), w.to(torch.float64).clone()
    g, m = w.shape
    steps = int(prunable.sum(1).max()) if steps is None else steps
    removed = torch.zeros(g, m, dtype=torch.bool, device=w.device)
    forced = torch.zeros_like(removed) if forced is None else forced & prunable
    order = torch.full((g, steps), -1, dtype=torch.long, device=w.device)
    increase = torch.full((g, steps), float("inf"), dtype=torch.float64, device=w.device)
    rows = torch.arange(g, device=w.device)
    for t in range(steps):
        d = Hinv.diagonal(dim1=-2, dim2=-1)
        score = w**2 / (2 * d.clamp_min(1e-300))
        score = torch.where(forced & ~removed, torch.full_like(score, -float("inf")), score)
        score = torch.where(prunable & ~removed, score, torch.full_like(score, float("inf")))
        best, q = score.min(1)
        live = best < float("inf")
        if not bool(live.any()):
            break
        _remove(Hinv, w, rows[live], q[live])
        removed[rows[live], q[live]] = True
        order[live, t] = q[live]
        increase[live, t] = best[live]
    return order, increase


def _remove(Hinv, w, rows, q):
    """OBS update and H⁻¹ downdate for removing coordinate q[r] of group rows[r] (in place)."""
    col = Hinv[rows, :, q]  # [r, m]
    dq = Hinv[rows, q, q].clamp_min(1e-300)
    if rows.numel() == Hinv.shape[0]:  # every group: in-place batched rank-one update, no gather/scatter
        w.sub_((w[rows, q] / dq)[:, None] * col)
        w[rows, q] = 0.0
        Hinv.baddbmm_(col[:, :, None], (col / dq[:, None])[:, None, :], alpha=-1)
        return
    w[rows] -= (w[rows, q] / dq)[:, None] * col
    w[rows, q] = 0.0
    Hinv[rows] -= col[:, :, None] * col[:, None, :] / dq[:, None, None]


def replay(Hinv: torch.Tensor, w: torch.Tensor, order: torch.Tensor, counts: torch.Tensor,
           update: bool = True) -> torch.Tensor:
    """Weights after removing the first ``counts[i]`` coordinates of ``order[i]`` in each group.

    With ``update`` the OBS updates are applied (the joint optimum for the removed set); without,
    the removed weights are only zeroed.
    """
    Hinv, w = Hinv.clone(), w.to(torch.float64).clone()
    rows = torch.arange(w.shape[0], device=w.device)
    for t in range(int(counts.max()) if counts.numel() else 0):
        act = counts > t
        r, q = rows[act], order[act, t]
        if update:
            _remove(Hinv, w, r, q)
        else:
            w[r, q] = 0.0
    return w
