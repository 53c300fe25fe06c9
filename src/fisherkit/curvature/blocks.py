"""Building blocks of block-structured curvature: dense, diagonal, Kronecker, eigen-Kronecker, sums.

A block covers a few parameters (``names``) and acts on a dict name → flat 1-D piece. Kronecker
blocks work on the combined matrix M = [W | b] of a layer (``O × I``), where F_block = G ⊗ A acts
as M ↦ G M A (row-major flattening of M).
"""

from __future__ import annotations

import math

import torch

from ..errors import FisherkitError
from .linalg import check_damping, pi_factor, safe_eigh

DENSE_BLOCK_LIMIT = 8192


class Block:
    kind = "block"

    def __init__(self, names: list[str], numels: list[int]):
        self.names = list(names)
        self.numels = list(numels)

    @property
    def size(self) -> int:
        return sum(self.numels)

    # flat <-> dict helpers
    def cat(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([parts[n].reshape(-1) for n in self.names])

    def split(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, torch.split(flat, self.numels)))

    # defaults through to_dense (only for small blocks)
    def _dense_checked(self) -> torch.Tensor:
        if self.size > DENSE_BLOCK_LIMIT:
            raise FisherkitError(f"the block of {self.names} is too large ({self.size}) for a dense fallback")
        return self.to_dense()

    # eigendecompositions of the block's own matrices, cached (``decompose`` may fill them, e.g. split
    # over ranks); ``matrices`` lists what to decompose
    def matrices(self) -> list[torch.Tensor]:
        return []

    def set_eigs(self, eigs: list) -> None:
        self._eig = tuple((vals, vecs.contiguous()) for vals, vecs in eigs)

    def _eigh(self):
        if getattr(self, "_eig", None) is None:
            self._eig = (safe_eigh(self._dense_checked()),)
        return self._eig[0]

    def solve(self, parts, damping, pi_damping=False):
        vals, vecs = self._eigh()
        check_damping(damping, float(vals.min()), float(vals.max()), f"Fisher block of {self.names}")
        v = self.cat(parts)
        return self.split(vecs @ ((vecs.T @ v) / (vals + damping)))

    def logdet(self, damping):
        vals = self.eigvals()
        check_damping(damping, float(vals.min()), float(vals.max()), f"Fisher block of {self.names}")
        return torch.log(vals + damping).sum()

    def eigvals(self):
        return self._eigh()[0]

    def eigvecs(self, idx: torch.Tensor) -> torch.Tensor:
        """Eigenvectors (rows, block-flat order) for indices into ``eigvals()``."""
        return self._eigh()[1][:, idx].T

    def frob2(self):
        return (self._dense_checked() ** 2).sum()

    def scale(self, a: float) -> "Block":
        raise NotImplementedError

    def add(self, other: "Block") -> "Block":
        return SumBlock([self, other])

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        raise NotImplementedError


class DenseBlock(Block):
    kind = "dense"

    def __init__(self, names, numels, matrix: torch.Tensor):
        super().__init__(names, numels)
        self.matrix = matrix

    def mv(self, parts):
        return self.split(self.matrix @ self.cat(parts))

    def matrices(self):
        return [self.matrix]

    def diag(self):
        return self.split(self.matrix.diagonal().clone())

    def trace(self):
        return self.matrix.diagonal().sum()

    def to_dense(self):
        return self.matrix

    def frob2(self):
        return (self.matrix**2).sum()

    def scale(self, a):
        return DenseBlock(self.names, self.numels, a * self.matrix)

    def add(self, other):
        if isinstance(other, DenseBlock):
            return DenseBlock(self.names, self.numels, self.matrix + other.matrix)
        return SumBlock([self, other])

    def state(self):
        return {"matrix": self.matrix}, {}


class DiagBlock(Block):
    kind = "diag"

    def __init__(self, names, numels, values: torch.Tensor):
        super().__init__(names, numels)
        self.values = values

    def mv(self, parts):
        return self.split(self.values * self.cat(parts))

    def solve(self, parts, damping, pi_damping=False):
        check_damping(damping, float(self.values.min()), float(self.values.max()), f"diagonal Fisher of {self.names}")
        return self.split(self.cat(parts) / (self.values + damping))

    def diag(self):
        return self.split(self.values.clone())

    def trace(self):
        return self.values.sum()

    def to_dense(self):
        return torch.diag(self.values)

    def eigvals(self):
        return self.values

    def eigvecs(self, idx):
        e = self.values.new_zeros(len(idx), self.size)
        e[torch.arange(len(idx)), idx] = 1
        return e

    def frob2(self):
        return (self.values**2).sum()

    def scale(self, a):
        return DiagBlock(self.names, self.numels, a * self.values)

    def add(self, other):
        if isinstance(other, DiagBlock):
            return DiagBlock(self.names, self.numels, self.values + other.values)
        return SumBlock([self, other])

    def state(self):
        return {"values": self.values}, {}


class _LayerBlock(Block):
    """A block on a layer's combined matrix [W | b] of shape (out, in [+1]).

    ``transposed``: the weight is stored [in, out] (HuggingFace ``Conv1D``, GPT-2), so its flat entries
    run over (i, o); the combined matrix is still (out, in [+1]) and the factors are the same."""

    def __init__(self, names, numels, out_features: int, has_bias: bool, transposed: bool = False):
        super().__init__(names, numels)
        self.out_features = out_features
        self.has_bias = has_bias
        self.transposed = bool(transposed)

    def _weight(self, w: torch.Tensor) -> torch.Tensor:
        """A flat weight → its [O, I] matrix."""
        return w.reshape(-1, self.out_features).T if self.transposed else w.reshape(self.out_features, -1)

    def to_matrix(self, parts) -> torch.Tensor:
        w = self._weight(parts[self.names[0]])
        if self.has_bias:
            return torch.cat([w, parts[self.names[1]].reshape(self.out_features, 1)], 1)
        return w

    def from_matrix(self, m: torch.Tensor) -> dict[str, torch.Tensor]:
        w = m[:, :-1] if self.has_bias else m
        w = w.T.reshape(-1) if self.transposed else w.reshape(-1)
        if self.has_bias:
            return {self.names[0]: w, self.names[1]: m[:, -1].clone()}
        return {self.names[0]: w}

    def _perm(self, device) -> torch.Tensor:
        """Index map: block-flat order (weight, bias) → row-major index into the [W | b] matrix."""
        o = self.out_features
        i = self.size // o
        grid = torch.arange(o * i, device=device).reshape(o, i)
        w = grid[:, :-1] if self.has_bias else grid
        w = w.T.reshape(-1) if self.transposed else w.reshape(-1)
        return torch.cat([w, grid[:, -1]]) if self.has_bias else w

    def _meta(self) -> dict:
        meta = {"out_features": self.out_features, "has_bias": self.has_bias}
        if self.transposed:  # written only when set: files of untransposed layers are unchanged
            meta["transposed"] = True
        return meta

    def layout(self) -> dict:
        """The constructor's layout arguments (for copies of this block)."""
        return {"out_features": self.out_features, "has_bias": self.has_bias, "transposed": self.transposed}

    def _matrix_dense(self, big: torch.Tensor) -> torch.Tensor:
        p = self._perm(big.device)
        return big[p][:, p]


class KronBlock(_LayerBlock):
    """F_block = G ⊗ A (a KFAC block); eigen-decompositions of A and G are cached."""

    kind = "kron"

    def __init__(self, names, numels, out_features, has_bias, A: torch.Tensor, G: torch.Tensor, transposed=False):
        super().__init__(names, numels, out_features, has_bias, transposed)
        self.A, self.G = A, G
        self._eig = None

    def eig_factors(self):
        if self._eig is None:
            self._eig = (safe_eigh(self.A), safe_eigh(self.G))
        return self._eig

    def matrices(self):
        return [self.A, self.G]

    def mv(self, parts):
        return self.from_matrix(self.G @ self.to_matrix(parts) @ self.A)

    def solve(self, parts, damping, pi_damping=False):
        """(G ⊗ A + δI)⁻¹ through the factor eigenbases; ``pi_damping``: the factored approximation
        (G + (√δ/π) I)⁻¹ ⊗ (A + π√δ I)⁻¹ with π = ``linalg.pi_factor(A, G)`` (Martens & Grosse 2015, §6.3)."""
        (la, qa), (lg, qg) = self.eig_factors()
        m = qg.T @ self.to_matrix(parts) @ qa
        if pi_damping and damping > 0:
            pi, root = pi_factor(self.A, self.G), math.sqrt(damping)
            return self.from_matrix(qg @ (m / ((lg + root / pi)[:, None] * (la + root * pi)[None, :])) @ qa.T)
        lam = lg[:, None] * la[None, :]
        check_damping(damping, float(lam.min()), float(lam.max()), f"KFAC block of {self.names}")
        return self.from_matrix(qg @ (m / (lam + damping)) @ qa.T)

    def diag(self):
        return self.from_matrix(self.G.diagonal()[:, None] * self.A.diagonal()[None, :])

    def trace(self):
        return self.G.trace() * self.A.trace()

    def frob2(self):
        return (self.G**2).sum() * (self.A**2).sum()

    def eigvals(self):
        (la, _), (lg, _) = self.eig_factors()
        return (lg[:, None] * la[None, :]).reshape(-1)

    def eigvecs(self, idx):
        (_, qa), (_, qg) = self.eig_factors()
        n_in = qa.shape[0]
        rows = [self.cat(self.from_matrix(torch.outer(qg[:, int(k) // n_in], qa[:, int(k) % n_in]))) for k in idx]
        return torch.stack(rows) if rows else qa.new_zeros(0, self.size)

    def logdet(self, damping):
        vals = self.eigvals()
        check_damping(damping, float(vals.min()), float(vals.max()), f"KFAC block of {self.names}")
        return torch.log(vals + damping).sum()

    def to_dense(self):
        return self._matrix_dense(torch.kron(self.G, self.A))

    def scale(self, a):
        return KronBlock(self.names, self.numels, self.out_features, self.has_bias, self.A, a * self.G, self.transposed)

    def state(self):
        return {"A": self.A, "G": self.G}, self._meta()


class EKronBlock(_LayerBlock):
    """EKFAC block: F_block = (Q_G ⊗ Q_A) diag(S) (Q_G ⊗ Q_A)ᵀ with S refitted to the data."""

    kind = "ekron"

    def __init__(self, names, numels, out_features, has_bias, QA, QG, S, transposed=False):
        super().__init__(names, numels, out_features, has_bias, transposed)
        self.QA, self.QG, self.S = QA, QG, S

    def _rot(self, parts):
        return self.QG.T @ self.to_matrix(parts) @ self.QA

    def mv(self, parts):
        return self.from_matrix(self.QG @ (self.S * self._rot(parts)) @ self.QA.T)

    def solve(self, parts, damping, pi_damping=False):
        check_damping(damping, float(self.S.min()), float(self.S.max()), f"EKFAC block of {self.names}")
        return self.from_matrix(self.QG @ (self._rot(parts) / (self.S + damping)) @ self.QA.T)

    def diag(self):
        return self.from_matrix((self.QG**2) @ self.S @ (self.QA**2).T)

    def trace(self):
        return self.S.sum()

    def frob2(self):
        return (self.S**2).sum()

    def eigvals(self):
        return self.S.reshape(-1)

    def eigvecs(self, idx):
        n_in = self.QA.shape[0]
        rows = [self.cat(self.from_matrix(torch.outer(self.QG[:, int(k) // n_in], self.QA[:, int(k) % n_in]))) for k in idx]
        return torch.stack(rows) if rows else self.QA.new_zeros(0, self.size)

    def to_dense(self):
        q = torch.kron(self.QG, self.QA)
        return self._matrix_dense(q @ torch.diag(self.S.reshape(-1)) @ q.T)

    def scale(self, a):
        return EKronBlock(self.names, self.numels, self.out_features, self.has_bias, self.QA, self.QG, a * self.S,
                          self.transposed)

    def add(self, other):
        if isinstance(other, EKronBlock) and other.QA is self.QA and other.QG is self.QG:
            return EKronBlock(self.names, self.numels, self.out_features, self.has_bias, self.QA, self.QG, self.S + other.S,
                              self.transposed)
        return SumBlock([self, other])

    def state(self):
        return {"QA": self.QA, "QG": self.QG, "S": self.S}, self._meta()


class SumBlock(Block):
    """A sum of blocks over the same parameters (e.g. KFAC terms of several tasks in online EWC).

    Products, diagonals and traces are exact; solve / logdet / eig go through the dense block.
    """

    kind = "sum"

    def __init__(self, terms: list[Block]):
        flat = []
        for t in terms:
            flat.extend(t.terms if isinstance(t, SumBlock) else [t])
        super().__init__(flat[0].names, flat[0].numels)
        for t in flat:
            if t.names != self.names:
                raise FisherkitError(f"cannot add Fisher blocks over different parameters: {t.names} vs {self.names}")
        self.terms = flat

    def mv(self, parts):
        outs = [t.mv(parts) for t in self.terms]
        return {n: sum(o[n] for o in outs) for n in self.names}

    def diag(self):
        outs = [t.diag() for t in self.terms]
        return {n: sum(o[n] for o in outs) for n in self.names}

    def trace(self):
        return sum(t.trace() for t in self.terms)

    def to_dense(self):
        return sum(t.to_dense() for t in self.terms)

    def scale(self, a):
        return SumBlock([t.scale(a) for t in self.terms])

    def state(self):
        raise FisherkitError("a sum of structured Fisher blocks cannot be saved term-wise; save each term")
