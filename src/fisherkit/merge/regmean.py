"""RegMean (Jin et al. 2023) as the G = I special case of the KFAC merge.

For a layer with combined matrix M = [W | b] and inputs ã = [x; 1], model i's layer outputs on its
data are Mᵢ ãₙ. The least-squares merge min_M Σᵢ λᵢ (1/Nᵢ) Σₙ ‖(M − Mᵢ) ãₙ‖² has the normal equations
M (Σᵢ λᵢ Aᵢ) = Σᵢ λᵢ Mᵢ Aᵢ with Aᵢ = (1/Nᵢ) Σₙ ãₙ ãₙᵀ — KFAC's A factor. The KFAC Fisher merge solves
Σᵢ λᵢ (Gᵢ ⊗ Aᵢ) vec M = Σᵢ λᵢ (Gᵢ ⊗ Aᵢ) vec Mᵢ; with every Gᵢ = I it is exactly this. RegMean's α
shrinks off-diagonals: Aᵢ ← α Aᵢ + (1 − α) diag(Aᵢ). Layers without a Kronecker block are averaged.
"""

from __future__ import annotations

import torch


def regmean(fishers, thetas, lams, avg, alpha: float, eps: float) -> torch.Tensor:
    """Flat merged vector; ``fishers`` are KFAC Fishers (only their A factors are used)."""
    info = fishers[0].info
    offsets = dict(zip(info.names, info.offsets))
    out = avg.clone()
    for bl in zip(*[F.blocks for F in fishers]):
        if bl[0].kind != "kron":
            continue
        b0 = bl[0]
        idx = torch.cat([torch.arange(offsets[n], offsets[n] + s, device=avg.device) for n, s in zip(b0.names, b0.numels)])
        A_sum, MA_sum = 0, 0
        for lam, b, t in zip(lams, bl, thetas):
            A = alpha * b.A + (1 - alpha) * torch.diag(b.A.diagonal())
            A_sum = A_sum + lam * A
            MA_sum = MA_sum + lam * b0.to_matrix(b0.split(t[idx])) @ A
        scale = float(A_sum.diagonal().mean()) * eps
        A_sum = A_sum + scale * torch.eye(A_sum.shape[0], dtype=A_sum.dtype, device=A_sum.device)
        # M* = MA_sum A_sum⁻¹ (A_sum symmetric): solve A_sum X = MA_sumᵀ; pseudo-inverse if singular
        vals, vecs = torch.linalg.eigh(A_sum)
        tol = max(float(vals.max()), 1e-300) * A_sum.shape[0] * torch.finfo(A_sum.dtype).eps
        good = vals > tol
        q = vecs[:, good]
        M = (MA_sum @ q) / vals[good] @ q.T
        q0 = vecs[:, ~good]
        M = M + b0.to_matrix(b0.split(avg[idx])) @ q0 @ q0.T  # no input energy: keep the average
        out[idx] = b0.cat(b0.from_matrix(M))
    return out
