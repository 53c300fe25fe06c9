"""The one interface every Fisher structure shares.

``Curvature`` is a symmetric PSD linear operator on the flat parameter vector (parameters in
``named_parameters`` order, each flattened in C order). Shared defaults: ``to_dense`` from ``mv``
on unit vectors, ``trace`` from ``diag``, ``quadratic_form`` from ``mv``. ``BlockCurvature``
implements everything for block-structured matrices (dense, diagonal, block, KFAC, EKFAC).
"""

from __future__ import annotations

import math

import torch

from ..errors import FisherkitError, ShapeError
from ..params import ParamInfo
from .blocks import Block, SumBlock

DENSE_LIMIT = 20_000  # largest P for which to_dense / eigh of the full matrix is allowed


class Curvature:
    """A Fisher information matrix F (mean over N data points) in some structure."""

    structure = "base"

    def __init__(self, info: ParamInfo, num_samples: int, kind: str, likelihood: dict):
        self.info = info
        self.num_samples = int(num_samples)
        self.kind = kind
        self.likelihood = likelihood

    # ---- shape and vectors -------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return (self.info.size, self.info.size)

    def _check_vec(self, v: torch.Tensor) -> torch.Tensor:
        if not isinstance(v, torch.Tensor):
            raise ShapeError(f"expected a flat tensor of {self.info.size} entries; got {type(v).__name__}")
        if v.dim() != 1 or v.shape[0] != self.info.size:
            raise ShapeError(f"expected a flat vector of {self.info.size} entries (all parameters); got shape {tuple(v.shape)}")
        dtype = getattr(self, "dtype", None)
        if dtype is not None and v.dtype != dtype:
            # a lossless upcast is done (a bf16 model's gradient into its float32 Fisher); a cast that would drop
            # digits (float64 → float32) or change kind (integers) is the user's choice, not a silent one
            if v.is_floating_point() and torch.promote_types(v.dtype, dtype) == dtype:
                return v.to(dtype)
            raise ShapeError(f"the vector is {v.dtype} but this Fisher is {dtype}; pass v.to({dtype}) (or compute the "
                             f"Fisher of a model in {v.dtype})")
        return v

    def unflatten(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """Flat vector → dict parameter name → tensor of the parameter's shape."""
        self._check_vec(v)
        pieces = torch.split(v, self.info.numels)
        return {n: p.reshape(s) for n, p, s in zip(self.info.names, pieces, self.info.shapes)}

    def flatten(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """Dict name → tensor (same names as the Fisher) → flat vector."""
        missing = [n for n in self.info.names if n not in parts]
        if missing:
            raise ShapeError(f"missing parameters {missing}")
        return torch.cat([parts[n].reshape(-1) for n in self.info.names])

    # ---- the operator ------------------------------------------------------------------
    def mv(self, v: torch.Tensor) -> torch.Tensor:
        """F v."""
        raise NotImplementedError

    def __matmul__(self, v: torch.Tensor) -> torch.Tensor:
        if isinstance(v, torch.Tensor) and v.dim() == 2:
            return torch.stack([self.mv(c) for c in v.T], 1)
        return self.mv(v)

    def solve(self, v: torch.Tensor, damping: float = 0.0) -> torch.Tensor:
        """(F + damping·I)⁻¹ v; damping = 0 on a singular F raises."""
        raise NotImplementedError

    def quadratic_form(self, v: torch.Tensor) -> torch.Tensor:
        """vᵀ F v (for a displacement d: KL ≈ ½ dᵀ F d)."""
        v = self._check_vec(v)
        return torch.dot(v, self.mv(v))

    def diag(self) -> torch.Tensor:
        return self.to_dense().diagonal().clone()

    def trace(self) -> torch.Tensor:
        return self.diag().sum()

    def frobenius_norm(self) -> torch.Tensor:
        return self.to_dense().norm()

    def logdet(self, damping: float = 0.0) -> torch.Tensor:
        """log det(F + damping·I)."""
        vals = torch.linalg.eigvalsh(self.to_dense())
        from .linalg import check_damping

        check_damping(damping, float(vals.min()), float(vals.max()), "Fisher")
        return torch.log(vals.clamp_min(0) + damping).sum()

    def eig(self, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k eigenpairs (descending): values ``[k]`` and vectors ``[P, k]``."""
        vals, vecs = torch.linalg.eigh(self.to_dense())
        k = self._k(k)
        return vals.flip(0)[:k], vecs.flip(1)[:, :k]

    def _k(self, k):
        if k is None:
            return self.info.size
        if not isinstance(k, int) or k < 1 or k > self.info.size:
            raise FisherkitError(f"k must be an integer in [1, {self.info.size}]; got {k!r}")
        return k

    def to_dense(self) -> torch.Tensor:
        """The P × P matrix (refused above ``DENSE_LIMIT`` parameters)."""
        p = self.info.size
        if p > DENSE_LIMIT:
            raise FisherkitError(f"to_dense would form a {p}×{p} matrix; that is above the limit of {DENSE_LIMIT}")
        eye = torch.eye(p, dtype=self.dtype, device=self.device)
        return torch.stack([self.mv(e) for e in eye], 1)

    # ---- algebra -------------------------------------------------------------------------
    def __add__(self, other: "Curvature") -> "Curvature":
        raise NotImplementedError

    def __mul__(self, a: float) -> "Curvature":
        raise NotImplementedError

    __rmul__ = __mul__

    def _check_like(self, other):
        if not isinstance(other, Curvature) or other.structure != self.structure:
            raise FisherkitError(f"can only add Fishers of the same structure ({self.structure}); got {getattr(other, 'structure', type(other).__name__)}")
        if other.info.names != self.info.names or other.info.shapes != self.info.shapes:
            raise FisherkitError("can only add Fishers over the same parameters (names and shapes differ)")

    # ---- io ------------------------------------------------------------------------------
    def save(self, path) -> None:
        """Write safetensors + JSON metadata atomically (temp file + rename). See ``fisherkit.load``."""
        from .io import save

        save(self, path)

    def metadata(self) -> dict:
        return {
            "structure": self.structure,
            "kind": self.kind,
            "likelihood": self.likelihood,
            "names": self.info.names,
            "shapes": [list(s) for s in self.info.shapes],
            "num_samples": self.num_samples,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(P={self.info.size}, N={self.num_samples}, kind={self.kind!r})"


class BlockCurvature(Curvature):
    """A block-diagonal curvature whose blocks can be dense, diagonal, Kronecker or eigen-Kronecker."""

    structure = "block"

    def __init__(self, info, num_samples, kind, likelihood, blocks: list[Block]):
        super().__init__(info, num_samples, kind, likelihood)
        self.blocks = blocks
        covered = [n for b in blocks for n in b.names]
        if sorted(covered) != sorted(info.names):
            raise FisherkitError("internal: blocks do not cover every parameter exactly once")

    def _tensor0(self) -> torch.Tensor:
        b = self.blocks[0]
        while isinstance(b, SumBlock):
            b = b.terms[0]
        return next(iter(b.state()[0].values()))

    @property
    def dtype(self):
        return self._tensor0().dtype

    @property
    def device(self):
        return self._tensor0().device

    def _parts(self, v):
        v = self._check_vec(v)
        return dict(zip(self.info.names, torch.split(v, self.info.numels)))

    def _join(self, parts):
        return torch.cat([parts[n].reshape(-1) for n in self.info.names])

    def _map(self, fn, v):
        parts = self._parts(v)
        out = {}
        for b in self.blocks:
            out.update(fn(b, {n: parts[n] for n in b.names}))
        return self._join(out)

    def mv(self, v):
        return self._map(lambda b, p: b.mv(p), v)

    def solve(self, v, damping=0.0, pi_damping=False):
        """(F + damping·I)⁻¹ v block by block; ``pi_damping``: Kronecker blocks use the factored
        (π-) damping of Martens & Grosse (2015) instead of exact Tikhonov (the optimizer's default)."""
        return self._map(lambda b, p: b.solve(p, damping, pi_damping), v)

    def decompose(self, eigh=None) -> "BlockCurvature":
        """Eigendecompose every block's matrices now (Kronecker factors, dense blocks), with ``eigh``
        (a function: list of symmetric matrices -> list of (values, vectors); distributed training
        passes one that splits the work over ranks). Later ``solve``/``eig`` calls reuse them."""
        from .accumulator import LOCAL

        eigh = eigh or LOCAL.eigh
        todo = [(b, b.matrices()) for b in self.blocks if b.matrices()]
        eigs = iter(eigh([m for _, ms in todo for m in ms]))
        for b, ms in todo:
            b.set_eigs([next(eigs) for _ in ms])
        return self

    def diag(self):
        out = {}
        for b in self.blocks:
            out.update(b.diag())
        return self._join(out)

    def trace(self):
        return sum(b.trace() for b in self.blocks)

    def frobenius_norm(self):
        return torch.sqrt(sum(b.frob2() for b in self.blocks))

    def logdet(self, damping=0.0):
        return sum(b.logdet(damping) for b in self.blocks)

    def eig(self, k=None):
        k = self._k(k)
        vals = [b.eigvals() for b in self.blocks]
        allv = torch.cat(vals)
        top = torch.topk(allv, k).indices
        owner = torch.cat([torch.full((len(v),), i, dtype=torch.long) for i, v in enumerate(vals)])
        starts = torch.tensor([0] + [len(v) for v in vals]).cumsum(0)
        vecs = allv.new_zeros(self.info.size, k)
        offsets = dict(zip(self.info.names, self.info.offsets))
        for col, j in enumerate(top.tolist()):
            bi = int(owner[j])
            b = self.blocks[bi]
            row = b.eigvecs(torch.tensor([j - int(starts[bi])]))[0]
            for n, piece in b.split(row).items():
                vecs[offsets[n] : offsets[n] + piece.numel(), col] = piece
        return allv[top], vecs

    def to_dense(self):
        p = self.info.size
        if p > DENSE_LIMIT:
            raise FisherkitError(f"to_dense would form a {p}×{p} matrix; that is above the limit of {DENSE_LIMIT}")
        m = torch.zeros(p, p, dtype=self.dtype, device=self.device)
        offsets = dict(zip(self.info.names, self.info.offsets))
        for b in self.blocks:
            idx = torch.cat([torch.arange(offsets[n], offsets[n] + s) for n, s in zip(b.names, b.numels)]).to(m.device)
            m[idx[:, None], idx[None, :]] = b.to_dense()
        return m

    def _like(self, blocks):
        return type(self)(self.info, self.num_samples, self.kind, self.likelihood, blocks)

    def __add__(self, other):
        self._check_like(other)
        mine = {tuple(b.names): b for b in self.blocks}
        out = []
        for b in other.blocks:
            if tuple(b.names) not in mine:
                raise FisherkitError("can only add Fishers with the same block layout")
            out.append(mine[tuple(b.names)].add(b))
        res = self._like(out)
        res.num_samples = self.num_samples + other.num_samples
        return res

    def __mul__(self, a):
        if not isinstance(a, (int, float)) or not math.isfinite(a):
            raise FisherkitError(f"a Fisher can only be scaled by a finite number; got {a!r}")
        return self._like([b.scale(float(a)) for b in self.blocks])

    __rmul__ = __mul__
