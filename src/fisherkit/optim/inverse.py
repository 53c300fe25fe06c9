"""The optimizer's damped inverse (F̂ + λI)⁻¹, prepared once per curvature refresh and applied every step.

``Curvature.solve`` is the general operator: it joins the gradient into one flat vector, and per
Kronecker block rotates into the factor eigenbases, divides by the damped eigenvalues (recomputing
π and the damped products on every call) and rotates back — four matrix products per layer. An
optimizer applies the *same* inverse for ``inv_every`` steps, so ``DampedInverse`` does that work
once, when the curvature or the damping changes, and keeps:

* KFAC with π-damping (the optimizer's default): the damped inverse factors (G + (√λ/π) I)⁻¹ and
  (A + π√λ I)⁻¹, by Cholesky (no eigendecomposition at all: ``Preconditioner._refresh`` skips it), so
  a step is N = G_λ⁻¹ [∇W | ∇b] A_λ⁻¹ — two matrix products per layer;
* KFAC with exact Tikhonov, and EKFAC: the bases and the reciprocal 1/(λ_G λ_Aᵀ + λ) resp. 1/(S + λ);
* diagonal blocks: 1/(F̂ᵢᵢ + λ).

Layers whose matrices have the same shapes are stacked and solved with one batched product
(e.g. the q, k, v, o projections of every transformer block), and the gradient is never flattened.
Other block kinds (dense) go through their own ``solve``. The result equals ``Curvature.solve``
up to rounding (tests/optim/test_inverse.py).
"""

from __future__ import annotations

import math

import torch

from ..curvature.linalg import check_damping, pi_factor, safe_eigh


class DampedInverse:
    """(F̂ + λI)⁻¹ of a block curvature (``kfac``, ``ekfac``, ``diag``, ``dense``) for a fixed λ.

    ``solve(grads)`` takes and returns dicts name → tensor (the returned tensors have the gradients' shapes).
    """

    def __init__(self, curvature, damping: float, pi_damping: bool):
        self.curvature, self.damping, self.pi_damping = curvature, float(damping), bool(pi_damping)
        groups: dict[tuple, dict] = {}  # (kind, out, in, has_bias, transposed) -> stacked factors and the blocks
        self.diag: list[tuple] = []  # (names, reciprocal pieces)
        self.other: list = []  # blocks solved by their own solve
        for b in curvature.blocks:
            if getattr(b, "transposed", False):  # HF Conv1D ([in, out] weight): the block's own solve knows its layout
                self.other.append(b)
                continue
            if b.kind == "kron":
                if pi_damping and damping > 0:
                    pi, root = pi_factor(b.A, b.G), math.sqrt(damping)
                    key = ("inv", b.out_features, b.A.shape[0], b.has_bias, _transposed(b))
                    facs = (damped_inverse(b.G, root / pi), damped_inverse(b.A, root * pi))
                else:
                    (la, qa), (lg, qg) = b.eig_factors()
                    lam = lg[:, None] * la[None, :]
                    check_damping(damping, float(lam.min()), float(lam.max()), f"KFAC block of {b.names}")
                    key = ("eig", b.out_features, qa.shape[0], b.has_bias, _transposed(b))
                    facs = (qg, qa, 1.0 / (lam + damping))
            elif b.kind == "ekron":
                check_damping(damping, float(b.S.min()), float(b.S.max()), f"EKFAC block of {b.names}")
                key = ("eig", b.out_features, b.QA.shape[0], b.has_bias, _transposed(b))
                facs = (b.QG, b.QA, 1.0 / (b.S + damping))
            elif b.kind == "diag":
                check_damping(damping, float(b.values.min()), float(b.values.max()), f"diagonal Fisher of {b.names}")
                self.diag.append((b.names, torch.split(1.0 / (b.values + damping), b.numels)))
                continue
            else:
                self.other.append(b)
                continue
            g = groups.setdefault(key, {"blocks": [], "facs": []})
            g["blocks"].append(b)
            g["facs"].append(facs)
        self.groups = []
        for (kind, o, i, bias, tr), g in groups.items():
            stacked = [torch.stack(f) for f in zip(*g["facs"])]
            self.groups.append((kind, o, i, bias, tr, [b.names for b in g["blocks"]], stacked))

    def matches(self, curvature, damping: float, pi_damping: bool) -> bool:
        """Whether this inverse is the one of ``curvature`` at ``damping`` (else it must be rebuilt)."""
        return curvature is self.curvature and float(damping) == self.damping and bool(pi_damping) == self.pi_damping

    def solve(self, grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for kind, o, i, bias, tr, names, facs in self.groups:
            first = grads[names[0][0]]
            M = torch.empty(len(names), o, i, dtype=facs[0].dtype, device=first.device)
            w_in = i - 1 if bias else i
            for k, ns in enumerate(names):  # the combined matrices [W | b], (out, in [+1])
                w = grads[ns[0]].reshape(w_in, o).T if tr else grads[ns[0]].reshape(o, w_in)
                if bias:
                    M[k, :, :-1] = w
                    M[k, :, -1] = grads[ns[1]]
                else:
                    M[k] = w
            if kind == "inv":  # G_λ⁻¹ M A_λ⁻¹
                N = torch.bmm(torch.bmm(facs[0], M), facs[1])
            else:  # Q_G ((Q_Gᵀ M Q_A) ⊙ D) Q_Aᵀ
                qg, qa, d = facs
                N = torch.bmm(torch.bmm(qg, torch.bmm(torch.bmm(qg.transpose(1, 2), M), qa) * d), qa.transpose(1, 2))
            for k, ns in enumerate(names):
                w = N[k, :, :-1] if bias else N[k]
                out[ns[0]] = (w.T if tr else w).reshape(grads[ns[0]].shape)
                if bias:
                    out[ns[1]] = N[k, :, -1]
        for names, recips in self.diag:
            for n, r in zip(names, recips):
                out[n] = grads[n] * r.reshape(grads[n].shape)
        for b in self.other:
            res = b.solve({n: grads[n].reshape(-1) for n in b.names}, self.damping, self.pi_damping)
            out.update({n: res[n].reshape(grads[n].shape) for n in b.names})
        return out


def damped_inverse(m: torch.Tensor, c: float) -> torch.Tensor:
    """(M + cI)⁻¹ of a symmetric PSD factor, c > 0: by Cholesky, or — if that fails (M not PSD to working
    precision) — through ``safe_eigh`` with the eigenvalues clamped at 0, as ``KronBlock.solve`` does."""
    sym = 0.5 * (m + m.T)
    chol, info = torch.linalg.cholesky_ex(sym + c * torch.eye(m.shape[0], dtype=m.dtype, device=m.device))
    if int(info) == 0:
        return torch.cholesky_inverse(chol)
    vals, vecs = safe_eigh(m)
    return (vecs / (vals + c)) @ vecs.T


def _transposed(block) -> bool:
    """Whether the layer's weight is stored [in, out] (HuggingFace ``Conv1D``): its flat entries run over (i, o)."""
    return bool(getattr(block, "transposed", False))
