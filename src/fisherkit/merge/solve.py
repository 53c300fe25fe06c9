"""The linear systems behind Fisher-weighted merging, solved block by block.

For models θ₁…θ_k with Fishers F₁…F_k, weights λᵢ, scale factors cᵢ (1, or 1/mean-diag when
normalising) and a damping ε, the merged parameters solve

    Σᵢ λᵢ (cᵢ Fᵢ + ε I) θ* = Σᵢ λᵢ cᵢ Fᵢ θᵢ + ε (Σᵢ λᵢ) θ_prior

(Matena & Raffel 2022, eq. 3 with their ε; θ_prior = the λ-weighted average by default, which is
their formula exactly: then the right side is Σᵢ λᵢ (cᵢFᵢ + εI) θᵢ). Every block-structured Fisher
(diag, block, dense, kfac, ekfac) is merged block by block — the Fishers of models of one
architecture share a block layout: diagonal blocks in closed form, small blocks by a dense
eigen-solve, large ones (a KFAC layer above ``KRON_DENSE_LIMIT`` parameters, a sum of Kronecker
products with no closed-form inverse) by preconditioned conjugate gradients that never form the matrix. Directions in which no model has
curvature (and ε = 0) get the weighted average.
"""

from __future__ import annotations

import warnings

import torch

from ._checks import MergeError

DENSE_SOLVE_LIMIT = 6000  # blocks up to this many parameters are solved densely (Cholesky, float64)
# A Kronecker block above this many parameters is solved by conjugate gradients preconditioned with the
# Kronecker product of the mean factors: one iteration costs k Kronecker products, O(k(O²I + OI²)), where
# forming and factorising the dense sum costs O(k(OI)²) + O((OI)³/3). Measured on the digits merging
# study (a 64 × 65 layer, 4,160 parameters, three models): 31-39 s dense against 0.5-1.1 s by CG, the
# two within 7e-4 (relative, max over entries) from ε = 1e-6 to 0.1.
KRON_DENSE_LIMIT = 1024


def _cg(apply, rhs, x0, precond, tol: float, maxiter: int, what: str) -> torch.Tensor:
    """Preconditioned conjugate gradients for a symmetric PSD operator, from ``x0``."""
    x = x0.clone()
    r = rhs - apply(x)
    norm_b = float(rhs.norm()) or 1.0
    if float(r.norm()) <= tol * norm_b:
        return x
    z = precond(r)
    p = z.clone()
    rz = torch.dot(r, z)
    for _ in range(maxiter):
        ap = apply(p)
        pap = torch.dot(p, ap)
        if float(pap) <= 0:
            break
        alpha = rz / pap
        x = x + alpha * p
        r = r - alpha * ap
        if float(r.norm()) <= tol * norm_b:
            return x
        z = precond(r)
        rz_new = torch.dot(r, z)
        p = z + (rz_new / rz) * p
        rz = rz_new
    warnings.warn(f"merge: conjugate gradients for {what} stopped at relative residual "
                  f"{float(r.norm()) / norm_b:.2e} (> {tol:.0e}); raise damping or cg_maxiter", stacklevel=3)
    return x


def _weighted_average(vectors, lams):
    return sum(lam * v for lam, v in zip(lams, vectors)) / sum(lams)


def _solve_dense(mat, rhs, fallback):
    """Solve a symmetric PSD system; in its null space take ``fallback`` (the weighted average)."""
    vals, vecs = torch.linalg.eigh(0.5 * (mat + mat.T))
    tol = max(float(vals.max()), 1e-300) * mat.shape[0] * torch.finfo(mat.dtype).eps
    keep = vals > tol
    q, q0 = vecs[:, keep], vecs[:, ~keep]
    return q @ ((q.T @ rhs) / vals[keep]) + q0 @ (q0.T @ fallback)


def _kron_preconditioner(blocks, coefs, eps_total):
    """(Σ cᵢGᵢ / Σcᵢ ⊗ Σ cᵢAᵢ + ε)⁻¹ as a function: the exact inverse when all Aᵢ (or all Gᵢ) agree."""
    total = sum(coefs)
    A = sum(c * b.A for c, b in zip(coefs, blocks)) / total
    G = sum(c * b.G for c, b in zip(coefs, blocks))
    la, qa = torch.linalg.eigh(A)
    lg, qg = torch.linalg.eigh(G)
    lam = lg.clamp_min(0)[:, None] * la.clamp_min(0)[None, :] + eps_total
    lam = torch.where(lam > 0, lam, torch.ones_like(lam))
    b0 = blocks[0]

    def apply(v):
        m = b0.to_matrix(b0.split(v))
        return b0.cat(b0.from_matrix(qg @ ((qg.T @ m @ qa) / lam) @ qa.T))

    return apply


def merge_block(blocks, thetas, lams, coefs, eps, prior, dense_limit, tol, maxiter, kron_dense_limit=KRON_DENSE_LIMIT):
    """Merge one block: ``thetas`` are flat pieces (block order), ``coefs[i] = λᵢcᵢ``; returns the flat piece.

    Dense solves run in float64 whatever the model's dtype (a Fisher merge is ill-conditioned by nature:
    the directions no model cares about are exactly the ones ε decides).
    """
    eps_total = eps * sum(lams)
    out_dtype = prior.dtype
    thetas = [t.double() for t in thetas]
    prior = prior.double()
    fallback = prior
    kinds = {b.kind for b in blocks}

    def split(v):
        return blocks[0].split(v)

    if kinds == {"diag"}:
        vals = [b.values.double() for b in blocks]
        rhs = sum(c * v * t for c, v, t in zip(coefs, vals, thetas)) + eps_total * prior
        d = sum(c * v for c, v in zip(coefs, vals)) + eps_total
        safe = torch.where(d > 0, d, torch.ones_like(d))
        return torch.where(d > 0, rhs / safe, fallback).to(out_dtype)
    size = blocks[0].size
    if size <= (min(dense_limit, kron_dense_limit) if kinds == {"kron"} else dense_limit):
        mats = [b.to_dense().double() for b in blocks]
        mat = sum(c * m for c, m in zip(coefs, mats))
        rhs = sum(c * (m @ t) for c, m, t in zip(coefs, mats, thetas)) + eps_total * prior
        mat = mat + eps_total * torch.eye(size, dtype=mat.dtype, device=mat.device)
        if eps_total > 0:
            L, info = torch.linalg.cholesky_ex(mat)
            if int(info) == 0:
                return torch.cholesky_solve(rhs[:, None], L)[:, 0].to(out_dtype)
        return _solve_dense(mat, rhs, fallback).to(out_dtype)

    def apply_one(b, v):
        return b.cat(b.mv(split(v.to(b.cat(b.diag()).dtype)))).double()

    rhs = sum(c * apply_one(b, t) for c, b, t in zip(coefs, blocks, thetas)) + eps_total * prior

    def apply(v):
        return sum(c * apply_one(b, v) for c, b in zip(coefs, blocks)) + eps_total * v

    if kinds == {"kron"}:
        precond64 = _kron_preconditioner(blocks, coefs, eps_total)
        precond = lambda r: precond64(r.to(blocks[0].A.dtype)).double()  # noqa: E731
    else:
        d = sum(c * b.cat(b.diag()).double() for c, b in zip(coefs, blocks)) + eps_total
        d = torch.where(d > 0, d, torch.ones_like(d))
        precond = lambda r: r / d  # noqa: E731
    return _cg(apply, rhs, fallback.clone(), precond, tol, maxiter, f"the block of {blocks[0].names}").to(out_dtype)


def fisher_weighted(fishers, thetas, lams, coefs, eps, prior, dense_limit=DENSE_SOLVE_LIMIT, tol=1e-10,
                    maxiter=1000, kron_dense_limit=KRON_DENSE_LIMIT) -> torch.Tensor:
    """Solve Σλᵢ(cᵢFᵢ + εI)θ* = Σλᵢcᵢ Fᵢθᵢ + εΣλᵢ·prior for θ* (flat vectors in the Fishers' order).

    ``thetas`` and ``prior`` are flat vectors over ``fishers[0].info.names``; ``coefs[i] = λᵢcᵢ``.
    """
    info = fishers[0].info
    for i, F in enumerate(fishers[1:], 1):
        if F.info.names != info.names or [tuple(s) for s in F.info.shapes] != [tuple(s) for s in info.shapes]:
            raise MergeError(f"Fisher {i} covers other parameters than Fisher 0; compute them with the same params=")
        if F.structure != fishers[0].structure:
            raise MergeError(f"Fisher {i} is {F.structure!r} but Fisher 0 is {fishers[0].structure!r}")
    layouts = [[tuple(b.names) for b in F.blocks] if hasattr(F, "blocks") else None for F in fishers]
    if all(lay is not None and lay == layouts[0] for lay in layouts):
        offsets = dict(zip(info.names, info.offsets))
        out = torch.empty_like(prior)
        for bl in zip(*[F.blocks for F in fishers]):
            idx = torch.cat([torch.arange(offsets[n], offsets[n] + s, device=prior.device)
                             for n, s in zip(bl[0].names, bl[0].numels)])
            piece = merge_block(list(bl), [t[idx] for t in thetas], lams, coefs, eps, prior[idx], dense_limit, tol,
                                maxiter, kron_dense_limit)
            out[idx] = piece
        return out
    # any other structure (lowrank, implicit, or mixed layouts): CG on the whole vector
    eps_total = eps * sum(lams)
    rhs = sum(c * F.mv(t) for c, F, t in zip(coefs, fishers, thetas)) + eps_total * prior
    if eps_total == 0:
        raise MergeError(f"a {fishers[0].structure!r} Fisher is singular; merge it with damping > 0")
    return _cg(lambda v: sum(c * F.mv(v) for c, F in zip(coefs, fishers)) + eps_total * v, rhs, prior.clone(),
               lambda r: r, tol, maxiter, "the whole parameter vector")
