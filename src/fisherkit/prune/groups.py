"""Each method as one OBS problem per layer: groups of coordinates with an inverse curvature block.

A layer's weights are cut into ``g`` independent groups of ``m`` coordinates, each with H⁻¹ [m, m]:

* ``magnitude``: m = 1, H = 1 — the saliency w²/2 ranks by |w|; no update.
* ``obd``: m = 1, H = F_qq (the diagonal Fisher) — saliency ½ F_qq w² (LeCun et al. 1990); no update.
* ``woodfisher``: m = ``block_size`` consecutive weights, H = that diagonal block of the layer's dense
  Fisher (Singh & Alistarh 2020) — OBS saliencies and updates inside each block.
* ``kfac``: one group per output row of M = [W | b], H = A (the layer's input second moment, KFAC's A
  factor), the bias column updated but never removed; each row's loss increase is scaled by G_oo, the
  row's output sensitivity. Under F = G ⊗ A a row-local update δ has loss ½ G_oo δᵀAδ, so this is OBS on
  diag(G) ⊗ A: SparseGPT / OBC's layer-wise problem, made comparable across rows and layers by G.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from .obs import damped_inverse


@dataclass
class LayerProblem:
    name: str
    Hinv: torch.Tensor  # [g, m, m] float64
    w: torch.Tensor  # [g, m] float64
    prunable: torch.Tensor  # [g, m] bool
    forced: torch.Tensor  # [g, m] bool: already pruned
    scale: torch.Tensor  # [g] multiplies the loss increases
    index: torch.Tensor  # [g, m] flat index into the weight (−1: not a weight coordinate)
    write: Callable  # new [g, m] weights → writes them into the model's parameters


def _param(model, name):
    return dict(model.named_parameters())[name]


def _write_flat(model, name, index):
    def write(wg):
        p = _param(model, name)
        flat = p.detach().reshape(-1).clone()
        sel = index >= 0
        flat[index[sel]] = wg[sel].to(flat.dtype)
        with torch.no_grad():
            p.copy_(flat.reshape(p.shape))

    return write


def scalar_problem(model, name, hdiag: torch.Tensor | None, damping: float, mask) -> LayerProblem:
    """m = 1 groups: magnitude (``hdiag`` None → H = 1) or OBD (H = diagonal Fisher)."""
    w = _param(model, name).detach().reshape(-1).to(torch.float64)
    n = w.numel()
    if hdiag is None:
        h = torch.ones_like(w)
    else:
        h = hdiag.reshape(-1).to(torch.float64)
        h = h + damping * float(h.mean().clamp_min(1e-300))
        h = h.clamp_min(1e-300)
    index = torch.arange(n, device=w.device)[:, None]
    forced = (~mask.reshape(-1))[:, None] if mask is not None else torch.zeros(n, 1, dtype=torch.bool, device=w.device)
    return LayerProblem(name, (1 / h)[:, None, None], w[:, None], torch.ones(n, 1, dtype=torch.bool, device=w.device),
                        forced, torch.ones(n, dtype=torch.float64, device=w.device), index,
                        _write_flat(model, name, index))


def block_problem(model, name, F_layer: torch.Tensor, block_size: int, damping: float, mask) -> LayerProblem:
    """WoodFisher: ``block_size`` consecutive weights per group, H = the diagonal block of ``F_layer``
    ([n, n] dense, or [n] when only a diagonal is available)."""
    w = _param(model, name).detach().reshape(-1).to(torch.float64)
    n = w.numel()
    m = min(block_size, n)
    g = math.ceil(n / m)
    pad = g * m - n
    index = torch.cat([torch.arange(n, device=w.device), torch.full((pad,), -1, device=w.device)]).reshape(g, m)
    F_layer = F_layer.to(torch.float64)
    scale = float((F_layer.diagonal() if F_layer.dim() == 2 else F_layer).mean().clamp_min(1e-300))
    H = torch.zeros(g * m, m, dtype=torch.float64, device=w.device).reshape(g, m, m)
    for b in range(g):
        lo, hi = b * m, min((b + 1) * m, n)
        if F_layer.dim() == 2:
            H[b, : hi - lo, : hi - lo] = F_layer[lo:hi, lo:hi]
        else:
            H[b, : hi - lo, : hi - lo] = torch.diag(F_layer[lo:hi])
        H[b, hi - lo :, hi - lo :] = torch.eye(m - (hi - lo), dtype=torch.float64) * scale  # padding
    H = H + damping * scale * torch.eye(m, dtype=torch.float64, device=w.device)
    Hinv = damped_inverse(H, 0.0)
    wg = torch.cat([w, w.new_zeros(pad)]).reshape(g, m)
    prunable = index >= 0
    forced = torch.zeros_like(prunable)
    if mask is not None:
        forced[prunable] = ~mask.reshape(-1)
    return LayerProblem(name, Hinv, wg, prunable, forced, torch.ones(g, dtype=torch.float64, device=w.device), index,
                        _write_flat(model, name, index))


def kfac_problem(model, name, block, damping: float, mask) -> LayerProblem:
    """Row-wise OBS on A with rows weighted by G_oo; ``block`` is the layer's Kronecker block."""
    A, G = block.A.to(torch.float64), block.G.to(torch.float64)
    names = block.names
    parts = {n: _param(model, n).detach().reshape(-1) for n in names}
    M = block.to_matrix(parts).to(torch.float64)  # [O, I(+1)]
    O, I = M.shape
    n_w = I - (1 if block.has_bias else 0)
    Hinv = damped_inverse(A, damping).expand(O, I, I)
    prunable = torch.zeros(O, I, dtype=torch.bool, device=M.device)
    prunable[:, :n_w] = True
    index = torch.full((O, I), -1, dtype=torch.long, device=M.device)
    index[:, :n_w] = torch.arange(O * n_w, device=M.device).reshape(O, n_w)
    forced = torch.zeros_like(prunable)
    if mask is not None:
        forced[:, :n_w] = ~mask.reshape(O, n_w)

    def write(wg):
        new = block.from_matrix(wg)
        with torch.no_grad():
            for n in names:
                p = _param(model, n)
                p.copy_(new[n].reshape(p.shape).to(p.dtype))

    return LayerProblem(name, Hinv, M, prunable, forced, G.diagonal().clamp_min(0).clone(), index, write)


def woodfisher_blocks(F, names):
    """name → the layer's dense Fisher block (weights only) from a ``structure="block"`` Fisher."""
    out = {}
    for b in F.blocks:
        if b.names[0] not in names:
            continue
        if b.kind == "dense":
            out[b.names[0]] = b.matrix
        else:  # too large for a dense block: only the diagonal is available
            warnings.warn(f"prune: the Fisher block of {b.names[0]} ({b.size} weights) is too large to be dense; "
                          "WoodFisher uses its diagonal there (OBD scores, no update)", stacklevel=4)
            out[b.names[0]] = b.cat(b.diag())
    return out
