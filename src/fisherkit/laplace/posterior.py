"""The posterior precision Λ = s·H + diag(p) of a Laplace approximation, block by block.

H = N·F is the Fisher (GGN) of the whole data set from ``fk.fisher``; s is a data scale (1/σ² for a
Gaussian likelihood fitted with σ = 1, else 1) and p the flat prior precision. Each *piece* keeps
a prior-independent factorisation of one block of H, so that log det Λ, Λ⁻¹v, diag Λ⁻¹, a square
root of Λ⁻¹ and J Λ⁻¹ Jᵀ cost little for every new (p, s) and stay differentiable in both — which
is what tuning the prior by marginal likelihood needs.

* ``DiagPiece``: Λ = s·h + p elementwise (exact for a diagonal H).
* ``DensePiece``: Λ = s·H + diag(p). With p constant on the block, through the eigenpairs of H
  (computed once); otherwise a Cholesky factor per call.
* ``EigenKronPiece`` (KFAC and EKFAC blocks): H = (Q_G ⊗ Q_A) diag(e) (Q_G ⊗ Q_A)ᵀ with e = N·λ_G λ_Aᵀ
  (KFAC) or e = N·S (EKFAC), on the layer matrix M = [W | b]. The prior enters in the same
  eigenbasis: Λ ≈ (Q_G ⊗ Q_A) diag(s·e + p̃) (Q_G ⊗ Q_A)ᵀ with p̃ = diag((Q_G ⊗ Q_A)ᵀ diag(p) (Q_G ⊗ Q_A))
  = (Q_G²)ᵀ p_M Q_A². This is *exact* when p is one number on the layer (scalar or per-layer prior
  with the same value for weight and bias) and an approximation (the diagonal of the prior in the
  Kronecker eigenbasis) otherwise — the eigendecomposition trick laplace-torch also uses.
* ``LowRankPiece``: H = U diag(N·λ) Uᵀ (top-k eigenpairs); with a scalar p on the block, exact:
  Λ⁻¹ = U diag(1/(s·N·λ + p)) Uᵀ + (I − UUᵀ)/p. A non-scalar prior is refused.
"""

from __future__ import annotations

import torch

from .errors import LaplaceError


def constant_value(p: torch.Tensor):
    """p[0] (keeping its graph) when every entry of ``p`` is equal, else None."""
    with torch.no_grad():
        same = bool((p == p[0]).all())
    return p[0] if same else None


class Piece:
    """One block of H over the flat posterior positions ``idx``."""

    kind = "piece"

    def __init__(self, idx: torch.Tensor):
        self.idx = idx
        self.names: list[str] = []  # the parameter tensors the piece covers, in its flat order

    @property
    def size(self) -> int:
        return int(self.idx.numel())

    def logdet(self, p, s):
        raise NotImplementedError

    def solve(self, v, p, s):
        """Λ⁻¹ v for v [n] or [n, m]."""
        raise NotImplementedError

    def mv(self, v, p, s):
        """Λ v for v [n]."""
        raise NotImplementedError

    def cov_diag(self, p, s):
        raise NotImplementedError

    def sample(self, z, p, s):
        """Λ^{-1/2} z for standard normal rows z [m, n]: rows with covariance Λ⁻¹."""
        raise NotImplementedError

    def fvar(self, J, p, s, diagonal=False):
        """J Λ⁻¹ Jᵀ for Jacobians J [B, C, n] → [B, C, C] (its diagonal [B, C] with ``diagonal``)."""
        raise NotImplementedError

    def state(self) -> tuple[dict, dict]:
        raise NotImplementedError


class DiagPiece(Piece):
    kind = "diag"

    def __init__(self, idx, h):
        super().__init__(idx)
        self.h = h

    def _prec(self, p, s):
        return s * self.h + p

    def logdet(self, p, s):
        return torch.log(self._prec(p, s)).sum()

    def solve(self, v, p, s):
        d = self._prec(p, s)
        return v / (d if v.dim() == 1 else d[:, None])

    def mv(self, v, p, s):
        return self._prec(p, s) * v

    def cov_diag(self, p, s):
        return 1.0 / self._prec(p, s)

    def sample(self, z, p, s):
        return z / self._prec(p, s).sqrt()

    def fvar(self, J, p, s, diagonal=False):
        if diagonal:
            return torch.einsum("bcn,n,bcn->bc", J, 1.0 / self._prec(p, s), J)
        return torch.einsum("bcn,n,bdn->bcd", J, 1.0 / self._prec(p, s), J)

    def state(self):
        return {"h": self.h}, {}


class DensePiece(Piece):
    kind = "dense"

    def __init__(self, idx, H):
        super().__init__(idx)
        self.H = H
        self._eig = None

    def eig(self):
        if self._eig is None:
            vals, vecs = torch.linalg.eigh(self.H)
            self._eig = (vals.clamp_min(0), vecs)
        return self._eig

    def _chol(self, p, s):
        L, info = torch.linalg.cholesky_ex(s * self.H + torch.diag(p))
        if int(info) != 0:
            raise LaplaceError("the posterior precision is not positive definite; raise the prior precision")
        return L

    def logdet(self, p, s):
        c = constant_value(p)
        if c is not None:
            return torch.log(s * self.eig()[0] + c).sum()
        return 2 * torch.log(self._chol(p, s).diagonal()).sum()

    def solve(self, v, p, s):
        c = constant_value(p)
        if c is not None:
            vals, q = self.eig()
            d = s * vals + c
            w = q.T @ v
            return q @ (w / (d if v.dim() == 1 else d[:, None]))
        L = self._chol(p, s)
        rhs = v if v.dim() == 2 else v[:, None]
        out = torch.cholesky_solve(rhs, L)
        return out if v.dim() == 2 else out[:, 0]

    def mv(self, v, p, s):
        return s * (self.H @ v) + p * v

    def cov_diag(self, p, s):
        c = constant_value(p)
        if c is not None:
            vals, q = self.eig()
            return (q**2) @ (1.0 / (s * vals + c))
        Linv = torch.linalg.solve_triangular(self._chol(p, s), torch.eye(self.size, dtype=p.dtype, device=p.device), upper=False)
        return (Linv**2).sum(0)

    def sample(self, z, p, s):
        c = constant_value(p)
        if c is not None:
            vals, q = self.eig()
            return (z @ q / (s * vals + c).sqrt()) @ q.T
        L = self._chol(p, s)  # x = L⁻ᵀ z has covariance (L Lᵀ)⁻¹
        return torch.linalg.solve_triangular(L.T, z.T, upper=True).T

    def fvar(self, J, p, s, diagonal=False):
        B, C, n = J.shape
        flat = J.reshape(B * C, n)
        c = constant_value(p)
        if c is not None:
            vals, q = self.eig()
            w = (flat @ q) / (s * vals + c).sqrt()
        else:
            w = torch.linalg.solve_triangular(self._chol(p, s), flat.T, upper=False).T
        w = w.reshape(B, C, n)
        return (w**2).sum(-1) if diagonal else w @ w.transpose(1, 2)

    def state(self):
        return {"H": self.H}, {}


class LayerLayout:
    """Flat (weight, bias) order of a layer's parameters ↔ row-major index of M = [W | b] (O × I)."""

    def __init__(self, out_features: int, n_in: int, has_bias: bool, transposed: bool = False):
        self.out_features, self.n_in, self.has_bias = int(out_features), int(n_in), bool(has_bias)
        self.transposed = bool(transposed)  # weight stored [in, out] (HF Conv1D): flat entries run over (i, o)

    def perm(self, device) -> torch.Tensor:
        grid = torch.arange(self.out_features * self.n_in, device=device).reshape(self.out_features, self.n_in)
        w = grid[:, :-1] if self.has_bias else grid
        w = w.T.reshape(-1) if self.transposed else w.reshape(-1)
        return torch.cat([w, grid[:, -1]]) if self.has_bias else w

    def to_matrix(self, v: torch.Tensor) -> torch.Tensor:
        """[..., n] flat → [..., O, I]."""
        out = v.new_zeros(v.shape[:-1] + (self.out_features * self.n_in,))
        out[..., self.perm(v.device)] = v
        return out.reshape(v.shape[:-1] + (self.out_features, self.n_in))

    def from_matrix(self, m: torch.Tensor) -> torch.Tensor:
        """[..., O, I] → [..., n] flat."""
        return m.reshape(m.shape[:-2] + (-1,))[..., self.perm(m.device)]

    def meta(self) -> dict:
        meta = {"out_features": self.out_features, "n_in": self.n_in, "has_bias": self.has_bias}
        if self.transposed:
            meta["transposed"] = True
        return meta


class EigenKronPiece(Piece):
    """H_layer = (Q_G ⊗ Q_A) diag(e) (Q_G ⊗ Q_A)ᵀ on M = [W | b]; e is [O, I]."""

    kind = "eigenkron"

    def __init__(self, idx, layout: LayerLayout, QG, QA, e):
        super().__init__(idx)
        self.layout, self.QG, self.QA, self.e = layout, QG, QA, e

    def _d(self, p, s):
        """Eigenvalues of Λ in the Kronecker eigenbasis, [O, I]."""
        c = constant_value(p)
        if c is not None:
            return s * self.e + c
        pm = self.layout.to_matrix(p)
        return s * self.e + (self.QG**2).T @ pm @ (self.QA**2)

    def _rot(self, m):  # Q_Gᵀ M Q_A for [..., O, I]
        return self.QG.T @ m @ self.QA

    def _unrot(self, r):
        return self.QG @ r @ self.QA.T

    def logdet(self, p, s):
        return torch.log(self._d(p, s)).sum()

    def solve(self, v, p, s):
        d = self._d(p, s)
        vt = v if v.dim() == 1 else v.T
        out = self.layout.from_matrix(self._unrot(self._rot(self.layout.to_matrix(vt)) / d))
        return out if v.dim() == 1 else out.T

    def mv(self, v, p, s):
        c = constant_value(p)
        if c is None:
            raise LaplaceError("Λv of a Kronecker posterior with a non-constant prior on a layer is not defined by the eigenbasis approximation")
        return self.layout.from_matrix(self._unrot(self._rot(self.layout.to_matrix(v)) * self._d(p, s)))

    def cov_diag(self, p, s):
        return self.layout.from_matrix((self.QG**2) @ (1.0 / self._d(p, s)) @ (self.QA**2).T)

    def sample(self, z, p, s):
        d = self._d(p, s)
        zm = z.reshape(z.shape[0], self.layout.out_features, self.layout.n_in)
        return self.layout.from_matrix(self._unrot(zm / d.sqrt()))

    def fvar(self, J, p, s, diagonal=False):
        r = self._rot(self.layout.to_matrix(J)) / self._d(p, s).sqrt()  # [B, C, O, I]
        if diagonal:
            return (r**2).sum((-2, -1))
        r = r.flatten(-2)
        return r @ r.transpose(1, 2)

    def state(self):
        return {"QG": self.QG, "QA": self.QA, "e": self.e}, self.layout.meta()


class LowRankPiece(Piece):
    """H = U diag(lam) Uᵀ (lam already multiplied by N); scalar prior only."""

    kind = "lowrank"

    def __init__(self, idx, U, lam):
        super().__init__(idx)
        self.U, self.lam = U, lam.clamp_min(0)

    def _c(self, p):
        c = constant_value(p)
        if c is None:
            raise LaplaceError("a low-rank Laplace posterior needs one prior precision for all its parameters (prior_structure='scalar')")
        return c

    def logdet(self, p, s):
        c = self._c(p)
        k = self.lam.numel()
        return torch.log(s * self.lam + c).sum() + (self.size - k) * torch.log(c)

    def solve(self, v, p, s):
        c = self._c(p)
        w = self.U.T @ v
        d = s * self.lam + c
        d = d if v.dim() == 1 else d[:, None]
        return self.U @ (w / d) + (v - self.U @ w) / c

    def mv(self, v, p, s):
        return s * (self.U @ (self.lam * (self.U.T @ v))) + p * v

    def cov_diag(self, p, s):
        c = self._c(p)
        u2 = self.U**2
        return u2 @ (1.0 / (s * self.lam + c)) + (1 - u2.sum(1)) / c

    def sample(self, z, p, s):
        c = self._c(p)
        w = z @ self.U
        return (w / (s * self.lam + c).sqrt()) @ self.U.T + (z - w @ self.U.T) / c.sqrt()

    def fvar(self, J, p, s, diagonal=False):
        c = self._c(p)
        ju = J @ self.U  # [B, C, k]
        if diagonal:
            return torch.einsum("bck,k,bck->bc", ju, 1.0 / (s * self.lam + c) - 1.0 / c, ju) + (J**2).sum(-1) / c
        inner = torch.einsum("bck,k,bdk->bcd", ju, 1.0 / (s * self.lam + c) - 1.0 / c, ju)
        return inner + J @ J.transpose(1, 2) / c

    def state(self):
        return {"U": self.U, "lam": self.lam}, {}


PIECES = {"diag": DiagPiece, "dense": DensePiece, "eigenkron": EigenKronPiece, "lowrank": LowRankPiece}


def piece_from_state(kind: str, idx: torch.Tensor, tensors: dict, meta: dict) -> Piece:
    if kind == "diag":
        return DiagPiece(idx, tensors["h"])
    if kind == "dense":
        return DensePiece(idx, tensors["H"])
    if kind == "eigenkron":
        layout = LayerLayout(meta["out_features"], meta["n_in"], meta["has_bias"], meta.get("transposed", False))
        return EigenKronPiece(idx, layout, tensors["QG"], tensors["QA"], tensors["e"])
    if kind == "lowrank":
        return LowRankPiece(idx, tensors["U"], tensors["lam"])
    raise LaplaceError(f"unknown posterior piece {kind!r} in file")


def pieces_from_curvature(F) -> list[Piece]:
    """Turn a ``Curvature`` F (mean over N) into prior-independent pieces of H = N·F.

    Uses only the public Curvature surface: ``.info``, ``.num_samples``, ``.blocks`` (DenseBlock
    ``.matrix``, DiagBlock ``.values``, KronBlock ``.eig_factors()``, EKronBlock ``QA/QG/S``) and,
    for the low-rank structure, ``eig(k)``.
    """
    n = float(F.num_samples)
    info = F.info
    offsets = dict(zip(info.names, info.offsets))
    numels = dict(zip(info.names, info.numels))
    if F.structure == "lowrank":
        vals, vecs = F.eig(F.rank)
        idx = torch.arange(info.size, device=vecs.device)
        pc = LowRankPiece(idx, vecs, n * vals)
        pc.names = list(info.names)
        return [pc]
    if F.structure == "implicit" or not hasattr(F, "blocks"):
        raise LaplaceError(
            f"structure {F.structure!r} has no factorisation a Laplace posterior can use; "
            "use 'diag', 'kfac', 'ekfac', 'block', 'dense' or 'lowrank'"
        )
    pieces: list[Piece] = []
    for b in F.blocks:
        idx = torch.cat([torch.arange(offsets[name], offsets[name] + numels[name]) for name in b.names])
        kind = getattr(b, "kind", "")
        if kind == "diag":
            pieces.append(DiagPiece(idx, n * b.values))
        elif kind == "dense":
            pieces.append(DensePiece(idx, n * b.matrix))
        elif kind in ("kron", "ekron"):
            layout = LayerLayout(b.out_features, b.size // b.out_features, b.has_bias, getattr(b, "transposed", False))
            if kind == "kron":
                (la, qa), (lg, qg) = b.eig_factors()
                e = n * lg.clamp_min(0)[:, None] * la.clamp_min(0)[None, :]
            else:
                qa, qg, e = b.QA, b.QG, n * b.S.clamp_min(0)
            pieces.append(EigenKronPiece(idx, layout, qg, qa, e))
        elif b.size <= 8192:  # e.g. a sum of blocks: densify a small one
            pieces.append(DensePiece(idx, n * b.to_dense()))
        else:
            raise LaplaceError(f"cannot build a Laplace posterior from a {kind!r} block of {b.size} parameters")
        pieces[-1].names = list(b.names)
    for pc in pieces:
        pc.idx = pc.idx.to(_device_of(pc))
    return pieces


def _device_of(piece: Piece):
    t = next(iter(piece.state()[0].values()))
    return t.device


def check_piece_sizes(pieces: list[Piece], total: int) -> None:
    covered = sum(pc.size for pc in pieces)
    if covered != total:
        raise LaplaceError(f"internal: posterior pieces cover {covered} of {total} parameters")


