"""Sums over a batch of the statistics each curvature structure needs.

All functions take a ``BatchStats`` and return *sums* over its samples and directions; the caller
divides by the number of samples N at the end (F is the mean over the data).
"""

from __future__ import annotations

import torch

from .collect import BatchStats
from ..params import ParamInfo
from .units import HookUnit


def hook_persample(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per-sample combined gradients [D, B, O, I] = Σ_t g_t ã_tᵀ (shared positions summed first)."""
    if a.shape[1] == 1:
        return g[:, :, 0, :, None] * a[None, :, 0, None, :]
    return torch.einsum("dbto,bti->dboi", g, a)


def persample_sq_sum(a: torch.Tensor, g: torch.Tensor, chunk_bytes: float = 2**25) -> torch.Tensor:
    """Σ_n Σ_d (Σ_t g_{d,n,t} ã_{n,t}ᵀ)² elementwise, [O, I], for layers shared over T > 1 positions.

    One direction and a few samples at a time: the per-sample gradients are one ``bmm`` of g[d]ᵀ
    ([n, O, T], a strided view whatever g's layout — conv or sequence — so nothing is copied) by ã
    ([n, T, I]), squared in place and summed: the [D, B, O, I] tensor is never formed (peak ≈
    ``chunk_bytes``). With many directions per sample (the exact kind on sequences: T·(V − 1) each) it
    goes through the positions' Gram instead (``_sq_sum_by_positions``), when T·(D + I) < D·I."""
    d, b, t, o = g.shape
    i = a.shape[-1]
    a = a.to(g.dtype)
    if t * (d + i) < d * i:  # many directions per sample (exact on sequences): through the T × T Gram
        return _sq_sum_by_positions(a, g, chunk_bytes)
    step = max(1, int(chunk_bytes // max(1, o * i * g.element_size())))
    out = None
    for k in range(d):
        gk = g[k].transpose(1, 2)  # [B, O, T]
        for s in range(0, b, step):
            ps = torch.bmm(gk[s : s + step], a[s : s + step])  # [n, O, I]
            ps.mul_(ps)
            part = ps.sum(0)
            out = part if out is None else out.add_(part)
    return out


def _sq_sum_by_positions(a: torch.Tensor, g: torch.Tensor, chunk_bytes: float) -> torch.Tensor:
    """``persample_sq_sum`` as Σ_n Σ_{t,t'} M_n[o,t,t'] ã_{n,t,i} ã_{n,t',i} with M_n[o,t,t'] = Σ_d g_{d,n,t,o} g_{d,n,t',o}:
    D·O·T² + O·T²·I multiply-adds per sample instead of the D·O·T·I of forming every direction's gradient
    (and no [O, I] tensor per direction: the direct way is bound by writing those). Output rows in chunks
    so that M stays within ``chunk_bytes``."""
    d, b, t, o = g.shape
    i = a.shape[-1]
    rows = max(1, int(chunk_bytes // max(1, t * t * g.element_size())))
    out = g.new_zeros(o, i)
    for s in range(b):
        gs = g[:, s]  # [D, T, O]
        n = (a[s][:, None, :] * a[s][None, :, :]).reshape(t * t, i)  # [T·T, I]
        for o0 in range(0, o, rows):
            go = gs[..., o0 : o0 + rows].permute(2, 1, 0)  # [o, T, D]
            m = torch.bmm(go, go.transpose(1, 2))  # [o, T, T]
            out[o0 : o0 + rows].addmm_(m.reshape(-1, t * t), n)
    return out


def split_unit(u: HookUnit, m: torch.Tensor) -> dict[str, torch.Tensor]:
    """Split a combined ``[..., O, I]`` tensor into the unit's weight ``[..., *w]`` and bias ``[..., O]``."""
    lead = m.shape[:-2]
    w = m[..., :-1] if u.bias else m
    if u.transposed:  # HF Conv1D: the weight is [in, out]
        w = w.transpose(-1, -2)
    w = w.reshape(*lead, *u.weight_shape)
    return {u.weight: w, u.bias: m[..., -1]} if u.bias else {u.weight: w}


def diag_sums(bs: BatchStats) -> dict[str, torch.Tensor]:
    """Σ_n Σ_d g² per parameter. For Linear layers without shared positions: (Σ_d g²)ᵀ(ã²), no per-sample tensors."""
    out: dict[str, torch.Tensor] = {}
    for u, a, g in bs.hook:
        if a.shape[1] == 1:
            sq = torch.einsum("bo,bi->oi", (g[:, :, 0] ** 2).sum(0), a[:, 0] ** 2)
        else:
            sq = persample_sq_sum(a, g)
        out.update(split_unit(u, sq))
    for n, g in bs.func.items():
        out[n] = (g**2).sum((0, 1))
    return out


def _add_(sums: dict[str, torch.Tensor], key: str, val: torch.Tensor) -> None:
    prev = sums.get(key)
    if prev is None:
        sums[key] = val
    else:
        prev.add_(val)


def diag_add(bs: BatchStats, sums: dict[str, torch.Tensor]) -> None:
    """In place: ``sums[u.weight] += Σ_n Σ_d g² ⊙ ã²`` as each hook unit's combined ``[O, I]`` matrix.

    For Linear layers without shared positions this is (Σ_d g_d²)ᵀ(ã²): the sum over directions is
    taken before the one matmul, which accumulates straight into the running sum (``addmm_``).
    torch.func parameters get ``sums[name] += Σ g²``. ``flat_diag`` turns them into the flat diagonal.
    """
    for u, a, g in bs.hook:
        if a.shape[1] == 1:
            g0 = g[:, :, 0]
            s = g0[0] * g0[0] if g0.shape[0] == 1 else (g0 * g0).sum(0)  # [B, O]
            a0 = a[:, 0]
            a2 = a0 * a0
            prev = sums.get(u.weight)
            if prev is None:
                sums[u.weight] = s.T @ a2
            else:
                prev.addmm_(s.T, a2)
        else:
            _add_(sums, u.weight, persample_sq_sum(a, g))
    for n, g in bs.func.items():
        _add_(sums, n, (g * g).sum((0, 1)))


def flat_diag(units: list[HookUnit], sums: dict[str, torch.Tensor], info: ParamInfo, n: int) -> torch.Tensor:
    """(1/n)·``diag_add``'s sums as one flat vector in parameter order, written straight from each unit's
    combined [O, I] sum and freeing the sums as it goes (peak: the sums plus one P-vector)."""
    first = next(iter(sums.values()))
    out = torch.empty(info.size, dtype=first.dtype, device=first.device)
    offs, numels = info.offsets, info.numels
    for u in units:
        m = sums.pop(u.weight, None)
        if m is None:
            continue
        i = info.index(u.weight)
        mw = m[:, :-1] if u.bias else m
        if u.transposed:
            out[offs[i] : offs[i] + numels[i]].view(-1, u.out_features).copy_(mw.T)
        else:
            out[offs[i] : offs[i] + numels[i]].view(u.out_features, -1).copy_(mw)
        if u.bias:
            j = info.index(u.bias)
            out[offs[j] : offs[j] + numels[j]].copy_(m[:, -1])
        del m
    for name in list(sums):
        i = info.index(name)
        out[offs[i] : offs[i] + numels[i]].copy_(sums.pop(name).reshape(-1))
    return out.div_(n)


def _flat_order(u: HookUnit) -> torch.Tensor:
    """Positions in the unit's row-major combined [O, I] matrix of its flat (weight, then bias) entries."""
    o, i = u.out_features, u.in_features
    grid = torch.arange(o * i).reshape(o, i)
    w = grid[:, :-1] if u.bias else grid
    w = (w.T if u.transposed else w).reshape(-1)
    return torch.cat([w, grid[:, -1]]) if u.bias else w


def gram_add_kron_(bs: BatchStats, info: ParamInfo, gram: torch.Tensor, chunk_bytes: float = 2**28) -> bool:
    """In place: ``gram += Σ_n Σ_d gₙ,d gₙ,dᵀ`` without per-sample gradients, when every parameter is in a
    Linear-type hook unit (no shared positions) and there are several directions; returns False otherwise.

    Block (k, l) of the Gram of per-sample gradients vec(g_k ã_kᵀ) is, in combined [O, I] coordinates,
    Σ_n (Σ_d g_k,d g_l,dᵀ)ₙ ⊗ (ã_k ã_lᵀ)ₙ = a matmul of [O_k·O_l, B] by [B, I_k·I_l]: 2·B·P_k·P_l FLOPs
    instead of the 2·D·B·P_k·P_l of forming the D·B per-sample gradients.
    """
    hook = bs.hook
    if bs.func or not hook or hook[0][2].shape[0] < 2 or any(a.shape[1] != 1 for _, a, _ in hook):
        return False
    if sum(sum(info.numels[info.index(x)] for x in u.names) for u, _, _ in hook) != info.size:
        return False
    offs, orders = [], []
    for u, _, _ in hook:
        names = u.names
        idx = [info.index(x) for x in names]
        if idx != list(range(idx[0], idx[0] + len(idx))):
            return False
        offs.append(info.offsets[idx[0]])
        orders.append(_flat_order(u).to(gram.device))
    for k, (uk, ak, gk) in enumerate(hook):
        for l in range(k, len(hook)):
            ul, al, gl = hook[l]
            ok, ik, ol, il = uk.out_features, uk.in_features, ul.out_features, ul.in_features
            step = max(1, int(chunk_bytes // max(1, ik * il * ak.element_size())))
            block = None
            for s in range(0, ak.shape[0], step):
                gg = torch.einsum("dbo,dbq->boq", gk[:, s : s + step, 0], gl[:, s : s + step, 0]).reshape(-1, ok * ol)
                aa = (ak[s : s + step, 0, :, None] * al[s : s + step, 0, None, :]).reshape(-1, ik * il)
                part = gg.T @ aa
                block = part if block is None else block.add_(part)
            block = block.reshape(ok, ol, ik, il).permute(0, 2, 1, 3).reshape(ok * ik, ol * il)
            block = block[orders[k]][:, orders[l]]
            rk, rl = slice(offs[k], offs[k] + block.shape[0]), slice(offs[l], offs[l] + block.shape[1])
            gram[rk, rl] += block
            if l != k:
                gram[rl, rk] += block.T
    return True


def persample_flat(bs: BatchStats, info: ParamInfo, names: list[str] | None = None) -> torch.Tensor:
    """Per-sample gradients as a ``[D·B, P]`` matrix, columns in flat-vector order (of ``names``)."""
    names = info.names if names is None else names
    parts: dict[str, torch.Tensor] = {}
    hook = bs.hook
    for k, u in enumerate(hook.units if hasattr(hook, "units") else [t[0] for t in hook]):
        if any(n in names for n in u.names):  # (reading a triple builds its ã: only the layers asked for)
            _, a, g = hook[k]
            parts.update(split_unit(u, hook_persample(a, g)))
    parts.update(bs.func)
    cols = []
    for n in names:
        t = parts[n]
        cols.append(t.reshape(t.shape[0] * t.shape[1], -1))
    return torch.cat(cols, dim=1)


SYM_BLOCK = 256  # column-block width of the symmetric Gram accumulation


SYM_MAX = 4096  # above this the n² output traffic dominates: one plain matmul, no mirroring pass


def _block_bounds(n: int) -> list[int]:
    if n > SYM_MAX:
        return [0, n]
    k = max(1, round(n / SYM_BLOCK))
    return [round(i * n / k) for i in range(k + 1)]


def gram_add_(sums: dict[str, torch.Tensor], key: str, x: torch.Tensor, alpha: float = 1.0) -> None:
    """In place: ``sums[key] += alpha · xᵀx`` for x ``[m, n]``, upper block triangle only.

    xᵀx is symmetric, so for n ≥ 1.5·SYM_BLOCK only the row panels on and above the block diagonal
    are multiplied (about (k+1)/2k of the FLOPs for k column blocks); the strictly lower blocks stay
    zero until ``symmetrize`` fills them at the end.
    """
    n = x.shape[1]
    acc = sums.get(key)
    if acc is None:
        acc = sums[key] = x.new_zeros(n, n)
    b = _block_bounds(n)
    if len(b) == 2:
        acc.addmm_(x.T, x, alpha=alpha)
        return
    for lo, hi in zip(b[:-1], b[1:]):
        acc[lo:hi, lo:].addmm_(x[:, lo:hi].T, x[:, lo:], alpha=alpha)


def symmetrize(m: torch.Tensor) -> torch.Tensor:
    """The full symmetric matrix from ``gram_add_``'s upper block triangle."""
    if len(_block_bounds(m.shape[0])) == 2:
        return m
    upper = torch.triu(m, 1)
    return m.triu_().add_(upper.T)


def kfac_add(a: torch.Tensor, g: torch.Tensor, sums: dict[str, torch.Tensor], key_a: str, key_g: str,
             with_a: bool = True, approx: str = "expand", a_scale: float = 1.0) -> None:
    """In place: the ``kfac_sums`` of one batch added to ``sums[key_a]`` / ``sums[key_g]`` (symmetric products).

    ``with_a=False`` adds only G (later direction chunks of a batch whose A was already counted).
    ``approx`` for layers shared over T positions (Eschenhagen et al. 2023): ``"expand"`` treats each
    position as a sample, A = Σₙ (1/T) Σ_t ã ãᵀ, G = Σₙ Σ_d Σ_t g gᵀ; ``"reduce"`` first reduces over the
    positions, A = Σₙ āₙ āₙᵀ with ā the mean of ã over t, G = Σₙ Σ_d ĝ ĝᵀ with ĝ = Σ_t g — exact when a
    sample's inputs are the same at every position (the per-sample gradient Σ_t g_t ãᵀ is then ĝ āᵀ).

    Both sums are later divided by the same count N (the batch's ``BatchStats.n``). ``a_scale`` = N_batch / B
    makes A a mean over the B samples whatever N counts: with ``per_token`` N counts tokens, and A
    divided by tokens as well as G would scale the product by 1/T² instead of the 1/T of a token mean.
    """
    if approx == "reduce" and a.shape[1] > 1:
        if with_a:
            gram_add_(sums, key_a, a.mean(1), a_scale)
        gram_add_(sums, key_g, g.sum(2).reshape(-1, g.shape[-1]))
        return
    if with_a:
        gram_add_(sums, key_a, a.reshape(-1, a.shape[-1]), a_scale / a.shape[1])
    gram_add_(sums, key_g, g.reshape(-1, g.shape[-1]))


def ekfac_sums(a: torch.Tensor, g: torch.Tensor, qa: torch.Tensor, qg: torch.Tensor) -> torch.Tensor:
    """Σ_n Σ_d (Q_Gᵀ Gₙ Q_A)² elementwise: the refitted diagonal of EKFAC in the Kronecker eigenbasis."""
    ra = a @ qa
    rg = g @ qg
    if a.shape[1] == 1:
        return torch.einsum("bo,bi->oi", (rg[:, :, 0] ** 2).sum(0), ra[:, 0] ** 2)
    return persample_sq_sum(ra, rg)
