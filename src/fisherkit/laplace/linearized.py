"""J Λ⁻¹ Jᵀ without per-sample Jacobians for the Linear layers of an ``nn.Sequential`` chain.

For a Linear layer s = W h + b inside a chain, the Jacobian of the outputs f with respect to its
matrix M = [W | b] is rank one per output: ∂f_c/∂M_oi = B_co ã_i with B = ∂f/∂s ([C, O], the
Jacobian of the rest of the chain; the identity for the last layer) and ã = [h, 1]. So a Kronecker
block contributes (B Q_G) diag(w) (B Q_G)ᵀ with w_o = Σ_i (Q_Aᵀ ã)_i² / d_oi, and a diagonal one
B diag(w) Bᵀ with w_o = Σ_i ã_i² / d_oi — C·O per sample instead of C·O·I. Other pieces get the
explicit Jacobian B ⊗ ã, and parameters of other modules (conv, norms) torch.func Jacobians.

``centre_parts`` replaces every Jacobian J by Π J with Π = I − 11ᵀ/C (B by Π B, the identity by Π,
a [C, O] matrix shared by the batch): then the same formulas give Π J Λ⁻¹ Jᵀ Π, the covariance of
the logits with their mean over the classes removed (see ``Laplace.functional_variance``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import jacrev, vmap

from .model_utils import jacobians
from .posterior import DiagPiece, EigenKronPiece, LayerLayout


def flatten_chain(model: nn.Module):
    """[(prefix, module)] of a (nested) nn.Sequential's leaves in call order, or None."""
    if not isinstance(model, nn.Sequential):
        return None
    out = []

    def walk(seq, prefix):
        for name, m in seq.named_children():
            full = f"{prefix}{name}"
            if isinstance(m, nn.Sequential):
                walk(m, full + ".")
            else:
                out.append((full, m))

    walk(model, "")
    return out


class LinearTerm:
    """What the outputs' Jacobian looks like on one Linear layer: B ([b, C, O] or None = I) and ã."""

    def __init__(self, names, B, phi, layout):
        self.names, self.B, self.phi, self.layout = names, B, phi, layout

    def explicit(self) -> torch.Tensor:
        """J [b, C, n] in the layer's flat (weight, bias) order."""
        if self.B is None:
            C = self.layout.out_features
            eye = torch.eye(C, dtype=self.phi.dtype, device=self.phi.device)
            m = eye[None, :, :, None] * self.phi[:, None, None, :]
        elif self.B.dim() == 2:  # one [C, O] matrix for the whole batch
            m = self.B[None, :, :, None] * self.phi[:, None, None, :]
        else:
            m = self.B[:, :, :, None] * self.phi[:, None, None, :]
        return self.layout.from_matrix(m)

    def centred(self) -> "LinearTerm":
        """The same layer's term for Π f, Π = I − 11ᵀ/C: B ← Π B (Π itself when B = I)."""
        if self.B is None:
            C = self.layout.out_features
            B = torch.eye(C, dtype=self.phi.dtype, device=self.phi.device) - 1.0 / C
        else:
            B = self.B - self.B.mean(-2, keepdim=True)
        return LinearTerm(self.names, B, self.phi, self.layout)

    def weighted_gram(self, w: torch.Tensor, Q: torch.Tensor | None = None, diagonal: bool = False) -> torch.Tensor:
        """(B Q) diag(w) (B Q)ᵀ per sample (B = I when None), w [b, O]; only its diagonal with ``diagonal``."""
        if self.B is None:
            if Q is None:
                return w if diagonal else torch.diag_embed(w)
            return w @ (Q**2).T if diagonal else torch.einsum("co,bo,do->bcd", Q, w, Q)
        if self.B.dim() == 2:
            BQ = self.B if Q is None else self.B @ Q
            return w @ (BQ**2).T if diagonal else torch.einsum("co,bo,do->bcd", BQ, w, BQ)
        BQ = self.B if Q is None else self.B @ Q
        if diagonal:
            return torch.einsum("bco,bo->bc", BQ**2, w)
        return torch.einsum("bco,bo,bdo->bcd", BQ, w, BQ)


def chain_terms(model: nn.Module, names: list[str], x: torch.Tensor):
    """(f [b, C], {name: LinearTerm or J [b, C, numel]}) or None when the model is not a usable chain."""
    chain = flatten_chain(model)
    if chain is None or not isinstance(x, torch.Tensor):
        return None
    wanted = set(names)
    owner = {}
    for k, (prefix, m) in enumerate(chain):
        for pname, _ in m.named_parameters(recurse=True):
            full = f"{prefix}.{pname}"
            if full in wanted:
                owner[full] = k
    if set(owner) != wanted:
        return None
    hs = [x]
    with torch.no_grad():
        for _, m in chain:
            hs.append(m(hs[-1]))
    f = hs[-1]
    if f.dim() != 2:
        return None
    parts: dict = {}
    other = []
    for k, (prefix, m) in enumerate(chain):
        mine = [n for n in names if owner.get(n) == k]
        if not mine:
            continue
        w_name, b_name = f"{prefix}.weight", f"{prefix}.bias"
        if not isinstance(m, nn.Linear) or w_name not in mine or hs[k].dim() != 2:
            other.extend(mine)
            continue
        tail = [mod for _, mod in chain[k + 1 :]]
        B = None
        if tail:
            def run_tail(s1, tail=tail):
                out = s1[None]
                for mod in tail:
                    out = mod(out)
                return out[0]

            B = vmap(jacrev(run_tail))(hs[k + 1].detach())  # [b, C, O]
        has_bias = b_name in mine
        phi = hs[k].detach()
        if has_bias:
            phi = torch.cat([phi, torch.ones_like(phi[:, :1])], 1)
        term = LinearTerm([w_name] + ([b_name] if has_bias else []), B, phi, LayerLayout(m.out_features, phi.shape[1], has_bias))
        for n in term.names:
            parts[n] = term
    if other:
        _, J = jacobians(model, other, x)
        numels = [dict(model.named_parameters())[n].numel() for n in other]
        for n, j in zip(other, torch.split(J, numels, -1)):
            parts[n] = j
    return f, parts


def centre_jacobian(J: torch.Tensor) -> torch.Tensor:
    """Π J for J [b, C, n]: the Jacobian of f − mean_c f_c."""
    return J - J.mean(-2, keepdim=True)


def centre_parts(parts: dict) -> dict:
    """``chain_terms``' parts for Π f (a layer's weight and bias keep sharing one term)."""
    done: dict = {}
    out = {}
    for n, t in parts.items():
        if isinstance(t, LinearTerm):
            if id(t) not in done:
                done[id(t)] = t.centred()
            out[n] = done[id(t)]
        else:
            out[n] = centre_jacobian(t)
    return out


def piece_fvar(pc, numels: dict, parts: dict, p: torch.Tensor, s, diagonal: bool = False) -> torch.Tensor:
    """J Λ⁻¹ Jᵀ of one piece from the chain terms (closed forms where the piece allows)."""
    names = pc.names
    terms = [parts[n] for n in names]
    if isinstance(pc, EigenKronPiece) and isinstance(terms[0], LinearTerm) and terms[0].names == names:
        t = terms[0]
        u2 = (t.phi @ pc.QA) ** 2
        w = u2 @ (1.0 / pc._d(p, s)).T
        return t.weighted_gram(w, pc.QG, diagonal)
    if isinstance(pc, DiagPiece):
        d_all = s * pc.h + p
        out, pos, done = 0.0, 0, set()
        offs = {}
        for n in names:
            offs[n] = (pos, pos + numels[n])
            pos += numels[n]
        for n in names:
            if n in done:
                continue
            t = parts[n]
            if isinstance(t, LinearTerm) and all(m in offs for m in t.names):
                d = torch.cat([d_all[offs[m][0] : offs[m][1]] for m in t.names])
                w = (t.phi**2) @ (1.0 / t.layout.to_matrix(d)).T
                out = out + t.weighted_gram(w, None, diagonal)
                done.update(t.names)
            else:
                lo, hi = offs[n]
                J = t.explicit()[..., _slice_of(t, n, numels)] if isinstance(t, LinearTerm) else t
                eq = "bcn,n,bcn->bc" if diagonal else "bcn,n,bdn->bcd"
                out = out + torch.einsum(eq, J, 1.0 / d_all[lo:hi], J)
                done.add(n)
        return out
    blocks, seen = [], set()
    for n in names:
        t = parts[n]
        if isinstance(t, LinearTerm):
            if id(t) not in seen:
                seen.add(id(t))
                full = t.explicit()
                blocks.extend((m, piece) for m, piece in zip(t.names, torch.split(full, [numels[m] for m in t.names], -1)))
        else:
            blocks.append((n, t))
    by_name = dict(blocks)
    J = torch.cat([by_name[n] for n in names], -1)
    return pc.fvar(J, p, s, diagonal)


def _slice_of(term: LinearTerm, name: str, numels: dict) -> slice:
    lo = 0
    for m in term.names:
        if m == name:
            return slice(lo, lo + numels[m])
        lo += numels[m]
    raise KeyError(name)
