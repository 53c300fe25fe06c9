"""``fisher(...)``, ``fvp(...)`` and ``kl_divergence(...)``: the public entry points of the core.

F = (1/N) Σₙ E_{y~p(y|xₙ,θ)}[∇θ log p(y|xₙ,θ) ∇θ log p(y|xₙ,θ)ᵀ] = (1/N) Σₙ Jₙᵀ Λₙ Jₙ, with Jₙ the
Jacobian of the model output and Λₙ the Fisher of the likelihood in output space.
"""

from __future__ import annotations

import math
import os

import torch

from .curvature import STRUCTURES
from .curvature.base import DENSE_LIMIT
from .curvature.blocks import DENSE_BLOCK_LIMIT, DenseBlock, DiagBlock, EKronBlock, KronBlock
from .curvature.implicit import Implicit
from .curvature.linalg import safe_eigh
from .curvature.lowrank import LowRank
from . import distributed as _dist
from .distributed import all_reduce_sums
from .engine import accumulate as acc
from .engine.collect import check_batchnorm, gather, warn_fallback
from .engine.data import iterate_batches, model_device_dtype
from .choices import check_kind, check_structure
from .engine.directions import directions
from .engine.functional import jvp_vjp, output_with_params
from .engine.units import make_plan
from .params import select_params
from .errors import FisherkitError
from .likelihoods import Likelihood, get_likelihood


def _module_groups(names: list[str]) -> list[list[str]]:
    """Group parameter names by owning module (prefix before the last dot), keeping order."""
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(n.rsplit(".", 1)[0] if "." in n else "", []).append(n)
    return list(groups.values())


def _seeded_generator(generator, device):
    if generator is not None:
        return generator
    g = torch.Generator(device=device)
    g.manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
    return g


def fisher(
    model: torch.nn.Module,
    data,
    likelihood: str | Likelihood = "categorical",
    kind: str = "exact",
    structure: str = "diag",
    mc_samples: int = 1,
    generator: torch.Generator | None = None,
    params=None,
    batch_size: int | None = None,
    progress: bool = False,
    rank: int = 20,
    max_memory: float = 2**30,
    allow_batchnorm_train: bool = False,
    process_group=None,
):
    """Fisher information matrix of ``model`` over ``data``, in the requested structure.

    F = (1/N) Σₙ Σ_d gₙ,d gₙ,dᵀ with gₙ,d = Jₙᵀ vₙ,d for output directions v: the columns of
    the output-Fisher square root (``kind="exact"``), scaled residuals at ``mc_samples`` sampled
    labels (``"mc"``), or the residual at the observed label (``"empirical"``, biased: it is the
    uncentred gradient covariance, not the curvature — Kunstner et al. 2019).

    Args:
        data: a DataLoader, an ``(X, y)`` pair (split into ``batch_size`` rows) or an iterable
            of ``(X, y)`` batches. Labels are only needed for ``kind="empirical"``.
        structure: ``"dense" | "diag" | "block" | "kfac" | "ekfac" | "lowrank" | "implicit"``.
        rank: number of eigenpairs kept by ``"lowrank"``.
        max_memory: bytes a single allocation may take (per-sample gradients are chunked to it).

    Returns a ``Curvature``; e.g. ``fk.fisher(net, (X, y), structure="kfac").solve(g, 1e-3)``.
    """
    check_structure(structure)
    lik = get_likelihood(likelihood)
    check_kind(kind, mc_samples)
    check_batchnorm(model, allow_batchnorm_train)
    chosen = select_params(model, params)
    # FISHERKIT_FORCE_FUNC=1: a benchmark knob (benchmarks/bench_fisher.py) that sends every parameter
    # through the torch.func path, to compare it with the hooks; not part of the API.
    force_func = os.environ.get("FISHERKIT_FORCE_FUNC", "") == "1"
    plan = make_plan(model, chosen, use_hooks=structure != "implicit" and not force_func)
    info = plan.info
    device, dtype = model_device_dtype(model)
    itemsize = torch.finfo(dtype).bits // 8
    if structure == "dense":
        need = info.size**2 * itemsize
        if info.size > DENSE_LIMIT or need > max_memory:
            raise FisherkitError(
                f"a dense Fisher of {info.size} parameters needs {need / 2**30:.2f} GiB "
                f"(limit: {DENSE_LIMIT} parameters, max_memory={max_memory / 2**30:.2f} GiB); "
                "use structure='kfac', 'diag', 'lowrank' or 'implicit'"
            )
    gen = _dist.rank_generator(_seeded_generator(generator, device), process_group) if kind == "mc" else generator
    common = dict(lik=lik, kind=kind, mc_samples=mc_samples, batch_size=batch_size, max_memory=max_memory)
    meta = (kind, lik.to_config())
    red = dict(process_group=process_group, what=f"fisher(structure={structure!r}, kind={kind!r})", device=device)

    def run(description, need_func=True):
        return _dist.local_batches(gather(model, data, plan=plan, generator=gen, progress=progress,
                                          description=description, need_func=need_func, **common),
                                   process_group, red["what"])

    if structure == "implicit":
        return _implicit(model, data, lik, kind, mc_samples, gen, info, batch_size, dtype, device, process_group)

    if structure == "diag":
        sums, n = {}, 0
        for bs in run("Fisher (diag)"):
            acc.diag_add(bs, sums)
            n += bs.n
        sums, n = all_reduce_sums(sums, n, **red)
        vals = acc.flat_diag(plan.hook_units, sums, info, n)
        return STRUCTURES["diag"](info, n, *meta, [DiagBlock(info.names, info.numels, vals)])

    if structure in ("dense", "lowrank") and info.size <= DENSE_LIMIT and info.size**2 * itemsize <= max_memory:
        gram, n = torch.zeros(info.size, info.size, dtype=dtype, device=device), 0
        for bs in run(f"Fisher ({structure})"):
            if not acc.gram_add_kron_(bs, info, gram):  # Linear-only models: no per-sample gradients
                u = acc.persample_flat(bs, info)
                gram.addmm_(u.T, u)
            n += bs.n
        sums, n = all_reduce_sums({"gram": gram}, n, **red)
        gram = sums["gram"] / n
        if structure == "dense":
            return STRUCTURES["dense"](info, n, *meta, [DenseBlock(info.names, info.numels, gram)])
        k = min(rank, info.size)  # distributed: rank 0 decomposes, broadcasts its top k pairs
        return LowRank(info, n, *meta, *_dist.top_eigenpairs(gram, k, process_group))

    if structure == "lowrank":  # too large for a dense Gram: Lanczos on the implicit operator
        imp = _implicit(model, data, lik, kind, mc_samples, gen, info, batch_size, dtype, device, process_group)
        vals, vecs = imp.eig(rank)
        return LowRank(info, imp.num_samples, *meta, vals, vecs)

    # block-structured: block, kfac, ekfac
    state = gen.get_state() if gen is not None else None
    sums, n = {}, 0

    def add(key, val):
        sums[key] = sums[key] + val if key in sums else val

    def layout():  # read the plan once the first batch has settled it (bypassed hooks moved to torch.func)
        kron = plan.hook_units if structure in ("kfac", "ekfac") else []
        grams = ([u.names for u in plan.hook_units] if structure == "block" else []) + _module_groups(plan.func_names)
        large = [g for g in grams if sum(info.numels[info.index(x)] for x in g) > DENSE_BLOCK_LIMIT]
        if structure in ("kfac", "ekfac"):
            warn_fallback(plan, structure)
        return kron, grams, large, {id(u) for u in kron}

    kron_units = None
    for bs in run(f"Fisher ({structure})"):
        if kron_units is None:
            kron_units, gram_groups, big, kron_ids = layout()
        n += bs.n
        for u, a, g in bs.hook:
            if id(u) in kron_ids:
                acc.kfac_add(a, g, sums, f"A:{u.weight}", f"G:{u.weight}", with_a=bs.first)
        d = acc.diag_sums(bs) if any(grp in big for grp in gram_groups) else None  # once per batch
        for grp in gram_groups:
            if grp in big:
                for x in grp:
                    add(f"d:{x}", d[x].reshape(-1))
            else:
                u = acc.persample_flat(bs, info, grp)
                add("g:" + grp[0], u.T @ u)
    if kron_units is None:  # no local batch (an idle rank)
        kron_units, gram_groups, big, kron_ids = layout()
    sums, n = all_reduce_sums(sums, n, **red)
    blocks = []
    for grp in gram_groups:
        numels = [info.numels[info.index(x)] for x in grp]
        if grp in big:
            blocks.append(DiagBlock(grp, numels, torch.cat([sums[f"d:{x}"] for x in grp]) / n))
        else:
            blocks.append(DenseBlock(grp, numels, sums["g:" + grp[0]] / n))
    kron = {}
    for u in kron_units:
        numels = [info.numels[info.index(x)] for x in u.names]
        # pop, mirror and scale in place: the sums are freed layer by layer instead of copied
        A = acc.symmetrize(sums.pop(f"A:{u.weight}")).div_(n)
        G = acc.symmetrize(sums.pop(f"G:{u.weight}")).div_(n)
        kb = KronBlock(u.names, numels, u.out_features, bool(u.bias), A, G)
        kron[u.weight] = kb
    if structure == "ekfac" and kron_units:
        if gen is not None:
            gen.set_state(state)
        eigs = _dist.eigh_split([m for kb in kron.values() for m in (kb.A, kb.G)], process_group)
        bases = {w: (eigs[2 * i][1], eigs[2 * i + 1][1]) for i, w in enumerate(kron)}
        ssum, n2 = {}, 0
        for bs in run("Fisher (ekfac, refit)", need_func=False):
            n2 += bs.n
            for u, a, g in bs.hook:
                if u.weight in bases:
                    s = acc.ekfac_sums(a, g, *bases[u.weight])
                    ssum[u.weight] = ssum[u.weight] + s if u.weight in ssum else s
        ssum, n2 = all_reduce_sums(ssum, n2, **red)
        for w, kb in list(kron.items()):
            qa, qg = bases[w]
            kron[w] = EKronBlock(kb.names, kb.numels, kb.out_features, kb.has_bias, qa, qg, ssum[w] / n2)
    ordered = []
    for x in info.names:  # blocks in parameter order
        for b in list(kron.values()) + blocks:
            if b.names[0] == x:
                ordered.append(b)
    return STRUCTURES[structure](info, n, *meta, ordered)


def _weight_fn(lik, kind, y, mc_samples, gen):
    def weight(f, u):
        if kind == "exact":
            s = lik.sqrt_fisher(f)
            return (s @ (s.transpose(-1, -2) @ u.unsqueeze(-1))).squeeze(-1)
        v = directions(lik, f, y, kind, mc_samples, gen)
        dims = tuple(range(2, v.dim()))
        return (v * (v * u.unsqueeze(0)).sum(dim=dims, keepdim=True)).sum(0)

    return weight


def _fvp_flat(model, data, v_flat, lik, kind, mc_samples, seed, info, batch_size, process_group=None):
    device, dtype = model_device_dtype(model)
    gen = None
    if kind == "mc":
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
    v = dict(zip(info.names, (t.reshape(s) for t, s in zip(torch.split(v_flat, info.numels), info.shapes))))
    total, n = None, 0
    what = f"Fisher-vector product (kind={kind!r})"
    for i, x, y in _dist.local_batches(iterate_batches(data, batch_size, device, dtype), process_group, what):
        if kind == "empirical" and y is None:
            raise FisherkitError(f"kind='empirical' needs labels, but batch {i} has none")
        _, g = jvp_vjp(model, info.names, x, v, _weight_fn(lik, kind, y, mc_samples, gen))
        flat = torch.cat([g[k].reshape(-1) for k in info.names])
        total = flat if total is None else total + flat
        n += x.shape[0]
    if _dist.world_size(process_group) == 1:
        return total / n, n
    sums = {"fv": total} if total is not None else {}
    sums, n = all_reduce_sums(sums, n, process_group, what, device, check=_dist.tensor_digest(v_flat))
    return sums["fv"] / n, n


def _implicit(model, data, lik, kind, mc_samples, gen, info, batch_size, dtype, device, process_group=None):
    seed = int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device).item()) if gen is not None else 0
    n = sum(x.shape[0] for _, x, _ in _dist.local_batches(iterate_batches(data, batch_size, device, dtype),
                                                          process_group, "implicit Fisher"))

    def product(v):
        return _fvp_flat(model, data, v, lik, kind, mc_samples, seed, info, batch_size, process_group)[0]

    if process_group is not None or torch.distributed.is_available() and torch.distributed.is_initialized():
        n = all_reduce_sums({}, n, process_group, "implicit Fisher")[1]
    return _dist.DistributedImplicit.wrap(Implicit(info, n, kind, lik.to_config(), product, dtype, device), process_group)


def fvp(model, data, v, likelihood="categorical", kind="exact", mc_samples=1, generator=None, params=None,
        batch_size=None, process_group=None) -> torch.Tensor:
    """Matrix-free Fisher-vector product F v = (1/N) Σₙ Jₙᵀ Λₙ (Jₙ v) (a JVP, then a VJP, per batch).

    ``v`` is a flat vector over the chosen parameters (or a dict name → tensor).
    """
    lik = get_likelihood(likelihood)
    check_kind(kind, mc_samples)
    info = make_plan(model, select_params(model, params), use_hooks=False).info
    device, _ = model_device_dtype(model)
    if isinstance(v, dict):
        v = torch.cat([v[n].reshape(-1) for n in info.names])
    if v.dim() != 1 or v.shape[0] != info.size:
        raise FisherkitError(f"v must be a flat vector of {info.size} entries; got shape {tuple(v.shape)}")
    seed = 0
    if kind == "mc":
        g = _seeded_generator(generator, device)
        seed = _dist.rank_seed(int(torch.randint(0, 2**62, (1,), generator=g, device=g.device).item()), process_group)
    return _fvp_flat(model, data, v, lik, kind, mc_samples, seed, info, batch_size, process_group)[0]


def kl_divergence(model, theta_a, theta_b, data, likelihood="categorical", params=None, batch_size=None) -> torch.Tensor:
    """Mean over the data of KL[p(y|x, θa) ‖ p(y|x, θb)]; for θb = θa + d it is ≈ ½ dᵀ F d.

    ``theta_a`` / ``theta_b`` are flat vectors over the chosen parameters, or dicts name → tensor.
    """
    lik = get_likelihood(likelihood)
    info = make_plan(model, select_params(model, params), use_hooks=False).info
    device, dtype = model_device_dtype(model)

    def as_dict(theta):
        if isinstance(theta, dict):
            return theta
        if theta.dim() != 1 or theta.shape[0] != info.size:
            raise FisherkitError(f"theta must be a flat vector of {info.size} entries; got shape {tuple(theta.shape)}")
        return {k: t.reshape(s) for k, t, s in zip(info.names, torch.split(theta, info.numels), info.shapes)}

    ta, tb = as_dict(theta_a), as_dict(theta_b)
    total, n = 0.0, 0
    with torch.no_grad():
        for _, x, _ in iterate_batches(data, batch_size, device, dtype):
            fa, fb = output_with_params(model, ta, x), output_with_params(model, tb, x)
            total = total + lik.kl(fa, fb).sum()
            n += x.shape[0]
    return total / n


def load(path, model=None, map_location=None):
    """Load a Fisher written by ``F.save(path)`` (see ``fisherkit.curvature.io.load``)."""
    from .curvature.io import load as _load

    return _load(path, model=model, map_location=map_location)


__all__ = ["fisher", "fvp", "kl_divergence", "load"]
