"""Small linear-algebra helpers shared by the curvature structures."""

from __future__ import annotations

import math

import torch

from ..errors import FisherkitError


def safe_eigh(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decomposition of a symmetric PSD matrix, with a float64 retry when eigh fails.

    Returns eigenvalues (ascending, clamped at 0) and eigenvectors in ``m``'s dtype.
    """
    sym = 0.5 * (m + m.T)
    try:
        vals, vecs = torch.linalg.eigh(sym)
        if not (torch.isfinite(vals).all() and torch.isfinite(vecs).all()):
            raise RuntimeError("non-finite eigenpairs")
    except RuntimeError:
        m64 = sym.to(torch.float64)
        if not torch.isfinite(m64).all():
            raise FisherkitError("cannot eigendecompose a matrix with non-finite entries") from None
        jitter = 1e-12 * max(1.0, float(m64.diagonal().abs().max()))
        vals, vecs = torch.linalg.eigh(m64 + jitter * torch.eye(m64.shape[0], dtype=torch.float64, device=m.device))
        vals, vecs = vals.to(m.dtype), vecs.to(m.dtype)
    return vals.clamp_min(0), vecs


def check_damping(damping: float, min_eig: float, max_eig: float, what: str) -> None:
    """Refuse a negative damping, or a zero damping on a (numerically) singular matrix."""
    if not math.isfinite(damping) or damping < 0:
        raise FisherkitError(f"damping must be a finite number >= 0; got {damping}")
    tol = max(max_eig, 1e-300) * 1e-12
    if damping == 0 and min_eig <= tol:
        raise FisherkitError(
            f"the {what} is singular (smallest eigenvalue {min_eig:.3g}); pass damping > 0, e.g. damping=1e-3"
        )


def pi_factor(A: torch.Tensor, G: torch.Tensor) -> float:
    """π = √((tr A / dim A) / (tr G / dim G)) (1 when either trace is 0): the factored-damping split
    of Martens & Grosse (2015, §6.3) that minimises the norm of the cross terms."""
    ta = float(A.diagonal().mean())
    tg = float(G.diagonal().mean())
    if ta <= 0 or tg <= 0 or not math.isfinite(ta) or not math.isfinite(tg):
        return 1.0
    return math.sqrt(ta / tg)
