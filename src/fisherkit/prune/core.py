"""``prune(model, data, sparsity=..., method=...)``: a pruned copy, by magnitude or by the Fisher.

One shot: every layer becomes an OBS problem (``groups``); a greedy OBS pass per group gives the
removal order and the loss increase of each removal (``obs.greedy``); the cheapest removals are
chosen up to the target — over all layers (``scope="global"``: loss increases of the Fisher methods
are in one unit, the KL) or per layer — and the chosen removals are replayed with their OBS
updates (``obs.replay``), which is the exact optimum of the quadratic model for that mask.
In ``steps`` > 1, the kept fraction shrinks geometrically, the Fisher is recomputed at the pruned
model each time, and ``finetune(model)`` runs between steps with the masks held.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch

from ._checks import METHODS, SCOPES, PruneError, check_damping, check_positive_int, check_sparsity, prunable_weights
from .groups import block_problem, kfac_problem, scalar_problem, woodfisher_blocks
from .masks import keep_masked, masks, set_masks
from .obs import greedy, replay


def _layer_names(model, weight):
    """The weight and (if any, and trainable) the bias of the module owning ``weight``."""
    prefix = weight.rsplit(".", 1)[0] if "." in weight else ""
    bias = f"{prefix}.bias" if prefix else "bias"
    named = dict(model.named_parameters())
    return [weight] + ([bias] if bias in named and named[bias].requires_grad else [])


def compute_fisher(model, data, method, names, kind="exact", likelihood="categorical", generator=None,
                   batch_size=None):
    """The one Fisher a method needs (None for magnitude): diag (obd), block (woodfisher), kfac (kfac)."""
    from ..api import fisher

    if method == "magnitude":
        return None
    structure = {"obd": "diag", "woodfisher": "block", "kfac": "kfac"}[method]
    params = [n for w in names for n in (_layer_names(model, w) if method == "kfac" else [w])]
    return fisher(model, data, likelihood=likelihood, kind=kind, structure=structure, params=params,
                  generator=generator, batch_size=batch_size)


def _problems(model, F, method, names, block_size, damping, old):
    if method == "magnitude":
        return [scalar_problem(model, n, None, damping, old.get(n)) for n in names]
    if method == "obd":
        d = F.unflatten(F.diag())
        return [scalar_problem(model, n, d[n], damping, old.get(n)) for n in names]
    if method == "woodfisher":
        blocks = woodfisher_blocks(F, names)
        return [block_problem(model, n, blocks[n], block_size, damping, old.get(n)) for n in names]
    kron = {b.names[0]: b for b in F.blocks if b.kind == "kron"}
    missing = [n for n in names if n not in kron]
    if missing:
        raise PruneError(f"method='kfac' needs a Kronecker block for {missing}; these layers got none (a layer "
                         "called more than once per forward?) — use method='woodfisher' or 'obd' for them")
    return [kfac_problem(model, n, kron[n], damping, old.get(n)) for n in names]


def allocate(increases: list[torch.Tensor], targets: list[int] | int) -> list[torch.Tensor]:
    """How many removals each group gets: the cheapest ones, globally (``targets`` an int) or per layer.

    ``increases[l]`` is [g, steps] (per-step loss increases of layer l's groups); the cumulative maximum
    along steps makes each group's costs non-decreasing, so the chosen set is a prefix of its order.
    """
    cums = [torch.cummax(inc, dim=1).values if inc.numel() else inc for inc in increases]
    if isinstance(targets, int):
        flat = torch.cat([c.reshape(-1) for c in cums])
        owner = torch.cat([torch.full((c.numel(),), i, dtype=torch.long) for i, c in enumerate(cums)])
        group = torch.cat([torch.arange(c.shape[0]).repeat_interleave(c.shape[1]) for c in cums])
        chosen = torch.sort(flat, stable=True).indices[:targets]
        out = []
        for i, c in enumerate(cums):
            sel = chosen[owner[chosen] == i]
            out.append(torch.bincount(group[sel], minlength=c.shape[0]))
        return out
    out = []
    for c, k in zip(cums, targets):
        sel = torch.sort(c.reshape(-1), stable=True).indices[:k]
        out.append(torch.bincount(sel // c.shape[1], minlength=c.shape[0]))
    return out


def prune_once(model, F, sparsity, method="kfac", names=None, scope="global", block_size=128, damping=1e-2,
               update=True, structured=None, group_size=1) -> dict[str, torch.Tensor]:
    """Prune ``model`` in place to ``sparsity`` with a given Fisher ``F``; returns the masks (True = kept)."""
    names = names or prunable_weights(model)
    old = masks(model)
    if structured == "rows":
        from .structured import prune_rows

        new_masks = prune_rows(model, F, method, names, sparsity, scope, group_size, damping, old)
        set_masks(model, {**old, **{n: m & old[n] if n in old else m for n, m in new_masks.items()}})
        from .masks import apply_masks

        apply_masks(model)
        return new_masks
    probs = _problems(model, F, method, names, block_size, damping, old)
    orders, incs = [], []
    for p in probs:
        order, inc = greedy(p.Hinv, p.w, p.prunable, p.forced)
        inc = torch.where(torch.isfinite(inc), inc * p.scale[:, None], inc)
        orders.append(order)
        incs.append(inc)
    numels = [int(p.prunable.sum()) for p in probs]
    targets = round(sparsity * sum(numels)) if scope == "global" else [round(sparsity * n) for n in numels]
    counts = allocate(incs, targets)
    new_masks = {}
    for p, order, cnt in zip(probs, orders, counts):
        p.write(replay(p.Hinv, p.w, order, cnt, update=update and method in ("woodfisher", "kfac")))
        keep = torch.ones(int(p.index.max()) + 1, dtype=torch.bool, device=p.w.device)
        steps = torch.arange(order.shape[1], device=order.device)[None, :]
        chosen = (steps < cnt[:, None]) & (order >= 0)
        rows = torch.arange(order.shape[0], device=order.device)[:, None].expand_as(order)
        keep[p.index[rows[chosen], order[chosen]]] = False
        shape = dict(model.named_parameters())[p.name].shape
        new_masks[p.name] = keep.reshape(shape)
    allm = {**old, **new_masks}
    set_masks(model, allm)
    with torch.no_grad():  # exact zeros, whatever the update did in floating point
        named = dict(model.named_parameters())
        for n, m in new_masks.items():
            named[n].mul_(m.to(named[n].dtype))
    return new_masks


def prune(model: torch.nn.Module, data=None, sparsity: float = 0.9, method: str = "kfac", scope: str = "global",
          steps: int = 1, finetune: Callable | None = None, block_size: int = 128, damping: float = 1e-2,
          update: bool = True, kind: str = "exact", likelihood="categorical", generator=None, batch_size=None,
          params=None, fisher=None, inplace: bool = False, structured: str | None = None,
          group_size: int = 1) -> torch.nn.Module:
    """Prune the Linear / Conv weights of ``model`` to ``sparsity`` (biases kept); returns the pruned model.

    Saliency of weight q: δL = w_q² / (2 [H⁻¹]_qq); OBS update of the others: −w_q H⁻¹e_q / [H⁻¹]_qq,
    with H per method (see ``fisherkit.prune.groups``): ``"magnitude"`` (H = I, no update), ``"obd"``
    (diagonal Fisher, no update), ``"woodfisher"`` (dense Fisher blocks of ``block_size`` weights),
    ``"kfac"`` (row-wise OBS on KFAC's A, rows weighted by G's diagonal: the SparseGPT/OBC route).

    Args:
        data: data for the Fisher (not needed for magnitude or with ``fisher=``).
        sparsity: fraction in [0, 1) of the selected weights set to zero.
        scope: ``"global"`` (one threshold over all layers) or ``"layer"`` (each layer to ``sparsity``).
        steps: prune in this many steps (kept fraction shrinking geometrically), the Fisher recomputed
            each time; ``finetune(model)`` (your training loop) runs between steps with the masks held.
        damping: H + damping · mean(diag H) · I (relative), for the inverse.
        update: False zeroes the chosen weights without the OBS update (an ablation).
        kind, likelihood, generator, batch_size: passed to ``fk.fisher``.
        params: names of the weights to prune (default: every Linear/Conv weight).
        fisher: a precomputed Fisher of the right structure (diag / block / kfac over those weights;
            for kfac, weights and biases) — only with ``steps=1``.
        inplace: prune ``model`` itself instead of a copy.
        structured: ``"rows"`` removes whole output rows (neurons, conv channels) of each weight, in units
            of ``group_size`` consecutive rows (e.g. the rows of one attention head); methods magnitude,
            obd and kfac (OBS across rows through G, see ``fisherkit.prune.structured``).

    The masks are in ``fisherkit.prune.masks(pruned)``; keep them applied while training with
    ``with fisherkit.prune.keep_masked(pruned, optimizer): ...``.

    Example::

        pruned = fk.prune.prune(net, (X, y), sparsity=0.9, method="kfac")
    """
    if method not in METHODS:
        raise PruneError(f"unknown method {method!r}; use one of {list(METHODS)}")
    if scope not in SCOPES:
        raise PruneError(f"scope must be one of {list(SCOPES)}; got {scope!r}")
    s = check_sparsity(sparsity)
    steps = check_positive_int(steps, "steps")
    block_size = check_positive_int(block_size, "block_size")
    damping = check_damping(damping)
    if structured not in (None, "rows"):
        raise PruneError(f"structured must be None (per weight) or 'rows'; got {structured!r}")
    group_size = check_positive_int(group_size, "group_size")
    if structured and method == "woodfisher":
        raise PruneError("structured pruning supports magnitude, obd and kfac (OBS across rows through G); "
                         "WoodFisher's blocks hold no cross-row information — use method='kfac'")
    if finetune is not None and not callable(finetune):
        raise PruneError("finetune must be a callable finetune(model) that trains the model in place")
    if not isinstance(model, torch.nn.Module):
        raise PruneError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    names = prunable_weights(model, params)
    if structured:
        shapes = {n: p.shape for n, p in model.named_parameters()}
        bad = [f"{n} ({shapes[n][0]} rows)" for n in names if shapes[n][0] % group_size]
        if bad:
            raise PruneError(f"group_size={group_size} does not divide the output rows of {', '.join(bad)}")
    if method != "magnitude" and data is None and fisher is None:
        raise PruneError(f"method={method!r} needs data for the Fisher (or fisher=)")
    if fisher is not None:
        if steps != 1:
            raise PruneError("fisher= is a Fisher of the unpruned model; with steps > 1 pass data instead")
        want = {"obd": "diag", "woodfisher": "block", "kfac": "kfac"}.get(method)
        if want and getattr(fisher, "structure", None) != want:
            raise PruneError(f"method={method!r} needs a {want!r} Fisher; got {getattr(fisher, 'structure', fisher)!r}")
        missing = [n for n in names if n not in fisher.info.names]
        if missing:
            raise PruneError(f"the given Fisher does not cover {missing}")
    target = model if inplace else copy.deepcopy(model)
    for t in range(1, steps + 1):
        s_t = s if t == steps else 1 - (1 - s) ** (t / steps)
        F = fisher if fisher is not None else compute_fisher(target, data, method, names, kind, likelihood,
                                                             generator, batch_size)
        prune_once(target, F, s_t, method, names, scope, block_size, damping, update, structured, group_size)
        if finetune is not None and t < steps:
            with keep_masked(target):
                finetune(target)
            from .masks import apply_masks

            apply_masks(target)
    if not masks(target):  # sparsity 0: still say which weights were considered
        set_masks(target, {n: torch.ones_like(dict(target.named_parameters())[n], dtype=torch.bool) for n in names})
    return target
