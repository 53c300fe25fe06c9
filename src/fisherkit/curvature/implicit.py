"""Implicit (matrix-free) Fisher: nothing stored, F v = (1/N) Σₙ Jₙᵀ Λₙ Jₙ v by a JVP then a VJP.

Each product is one pass over the data (two forwards, one JVP, one VJP per batch). Monte-Carlo
labels are re-drawn from the same seed at every product, so the operator is a fixed matrix.
``solve`` runs conjugate gradients; ``eig`` runs Lanczos (scipy's eigsh) on the products.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import FisherkitError
from .base import Curvature


class Implicit(Curvature):
    structure = "implicit"

    def __init__(self, info, num_samples, kind, likelihood, product, dtype, device, terms=None):
        super().__init__(info, num_samples, kind, likelihood)
        self._terms = terms if terms is not None else [(1.0, product)]
        self.dtype = dtype
        self.device = device

    def mv(self, v):
        v = self._check_vec(v)
        return sum(c * prod(v) for c, prod in self._terms)

    def solve(self, v, damping=0.0, tol: float = 1e-8, max_iter: int | None = None):
        """(F + δI)⁻¹ v by conjugate gradients (δ > 0 required: F of a network is singular)."""
        v = self._check_vec(v)
        if not math.isfinite(damping) or damping <= 0:
            raise FisherkitError(
                f"implicit solve needs damping > 0 (a network's Fisher is singular); got {damping}"
            )
        x = torch.zeros_like(v)
        r = v.clone()
        p = r.clone()
        rs = torch.dot(r, r)
        bound = float(tol) ** 2 * float(torch.dot(v, v))
        for _ in range(max_iter or 2 * self.info.size):
            if float(rs) <= bound:
                break
            ap = self.mv(p) + damping * p
            alpha = rs / torch.dot(p, ap)
            x = x + alpha * p
            r = r - alpha * ap
            rs_new = torch.dot(r, r)
            p = r + (rs_new / rs) * p
            rs = rs_new
        return x

    def eig(self, k=None):
        k = self._k(k)
        from scipy.sparse.linalg import LinearOperator, eigsh

        p = self.info.size
        if k >= p - 1:
            return super().eig(k)

        def matvec(x):
            t = torch.as_tensor(np.asarray(x).reshape(-1), dtype=self.dtype, device=self.device)
            return self.mv(t).detach().cpu().double().numpy()

        op = LinearOperator((p, p), matvec=matvec, dtype=np.float64)
        vals, vecs = eigsh(op, k=k, which="LA", tol=1e-10)
        order = np.argsort(vals)[::-1].copy()
        return (
            torch.as_tensor(vals[order], dtype=self.dtype, device=self.device),
            torch.as_tensor(vecs[:, order], dtype=self.dtype, device=self.device),
        )

    def __add__(self, other):
        self._check_like(other)
        res = Implicit(self.info, self.num_samples + other.num_samples, self.kind, self.likelihood, None,
                       self.dtype, self.device, self._terms + other._terms)
        return res

    def __mul__(self, a):
        if not isinstance(a, (int, float)) or not math.isfinite(a):
            raise FisherkitError(f"a Fisher can only be scaled by a finite number; got {a!r}")
        return Implicit(self.info, self.num_samples, self.kind, self.likelihood, None, self.dtype, self.device,
                        [(a * c, prod) for c, prod in self._terms])

    __rmul__ = __mul__

    def save(self, path):
        raise FisherkitError("an implicit Fisher stores no matrix to save; compute a dense, lowrank, kfac or diag Fisher")
