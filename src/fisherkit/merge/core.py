"""``merge(models, data=..., method=...)``: one merged copy of k models of the same architecture.

Methods (θᵢ the models' parameters, λᵢ their weights, θ₀ the shared starting point ``base``):

* ``"fisher"`` — θ* = (Σᵢ λᵢ(cᵢFᵢ + εI))⁻¹ (Σᵢ λᵢcᵢFᵢθᵢ + εΣλᵢ θ_prior) with Fᵢ the Fisher of
  model i on its data in ``structure`` (Matena & Raffel 2022); see ``fisherkit.merge.solve``.
* ``"average"`` — θ* = Σᵢ λᵢθᵢ / Σᵢ λᵢ.
* ``"task_arithmetic"`` — θ* = θ₀ + scale · Σᵢ wᵢ (θᵢ − θ₀) (Ilharco et al. 2023; ``weights``
  default to 1 here; scale = 1/k is averaging).
* ``"regmean"`` — per Linear/Conv layer, M* = (Σᵢ λᵢ Mᵢ Aᵢ)(Σᵢ λᵢ Aᵢ)⁻¹ with M = [W | b] and Aᵢ
  the layer's input second moment (KFAC's A factor) on model i's data: the least-squares merge
  of the layer outputs (Jin et al. 2023). It is the KFAC Fisher merge with every G replaced by I.
  Other parameters are averaged.

Parameters named in ``keep`` (e.g. per-task heads) are not merged: they come from
``models[into]``; ``with_heads(merged, models, keep)`` gives one copy per model with its own head.
The input models are never modified and the global RNG is never touched.
"""

from __future__ import annotations

import copy

import torch

from ._checks import MergeError, check_keep, check_models, check_number, check_weights
from .solve import DENSE_SOLVE_LIMIT, KRON_DENSE_LIMIT, fisher_weighted

METHODS = ("fisher", "average", "task_arithmetic", "regmean")
STRUCTURES = ("diag", "kfac", "ekfac", "block", "dense", "lowrank", "implicit")
NORMALIZE = (None, "none", "trace")


def _params(model, names):
    named = dict(model.named_parameters())
    return torch.cat([named[n].detach().reshape(-1) for n in names])


def _split_data(data, k):
    if data is None:
        return None
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) or t is None for t in data):
        return [data] * k  # one (X, y) pair shared by every model
    if not isinstance(data, (list, tuple)):
        raise MergeError("data must be a list with one data set per model (or one (X, y) pair shared by all)")
    if len(data) != k:
        raise MergeError(f"data has {len(data)} data sets for {k} models; pass one per model")
    return list(data)


def _check_fishers(fishers, k, names):
    if len(fishers) != k:
        raise MergeError(f"fishers has {len(fishers)} entries for {k} models")
    for i, F in enumerate(fishers):
        if not hasattr(F, "info") or not hasattr(F, "mv"):
            raise MergeError(f"fishers[{i}] is a {type(F).__name__}, not a fisherkit Curvature")
        if list(F.info.names) != list(names):
            raise MergeError(f"fishers[{i}] covers {list(F.info.names)[:4]}..., but the parameters to merge are "
                             f"{list(names)[:4]}...; compute it with params= the merged names (everything not in keep)")


def fishers_for(models, data, names, structure="diag", kind="exact", likelihood="categorical", generator=None,
                batch_size=None, at=None):
    """The k Fishers a Fisher merge uses: model i's Fisher on data i (or, with ``at=base``, base's on data i)."""
    from ..api import fisher

    return [fisher(at if at is not None else m, d, likelihood=likelihood, kind=kind, structure=structure,
                   params=names, generator=generator, batch_size=batch_size) for m, d in zip(models, data)]


def merge_parameters(models, data=None, method="fisher", structure="diag", weights=None, kind="exact",
                     likelihood="categorical", damping=1e-6, normalize=None, fishers=None, keep=None, base=None,
                     fisher_at="models", prior="average", scale=1.0, alpha=1.0, generator=None, batch_size=None,
                     dense_limit=DENSE_SOLVE_LIMIT, cg_tol=1e-10, cg_maxiter=1000, average=None,
                     kron_dense_limit=KRON_DENSE_LIMIT) -> dict[str, torch.Tensor]:
    """The merged values of the merged parameters (everything trainable not in ``keep``): name → tensor.

    Same arguments as ``merge``; nothing is copied or modified.
    """
    models = check_models(models)
    k = len(models)
    if method not in METHODS:
        raise MergeError(f"unknown method {method!r}; use one of {list(METHODS)}")
    all_names = [n for n, p in models[0].named_parameters() if p.requires_grad]
    kept = check_keep(keep, all_names)
    names = [n for n in all_names if n not in kept]
    averaged = check_keep(average, names) if average is not None else []
    if base is not None:
        check_models([models[0], base])
    if method == "task_arithmetic":
        if base is None:
            raise MergeError("task_arithmetic needs base= (the model every task started from)")
        lams = check_weights(weights if weights is not None else [1.0] * k, k)
        sc = check_number(scale, "scale")
        theta0 = _params(base, names)
        merged = theta0 + sc * sum(w * (_params(m, names) - theta0) for w, m in zip(lams, models))
        return _unflat(models[0], names, merged)
    lams = check_weights(weights, k)
    if method == "average":
        return _unflat(models[0], names, sum(w * _params(m, names) for w, m in zip(lams, models)) / sum(lams))
    eps = check_number(damping, "damping")
    if normalize not in NORMALIZE:
        raise MergeError(f"normalize must be one of {list(NORMALIZE)}; got {normalize!r}")
    if fisher_at not in ("models", "base"):
        raise MergeError(f"fisher_at must be 'models' or 'base'; got {fisher_at!r}")
    if prior not in ("average", "base"):
        raise MergeError(f"prior must be 'average' or 'base'; got {prior!r}")
    if (fisher_at == "base" or prior == "base") and base is None:
        raise MergeError("fisher_at='base' and prior='base' need base= (the shared starting point)")
    if method == "regmean":
        a = check_number(alpha, "alpha")
        if a > 1:
            raise MergeError(f"alpha must lie in [0, 1]; got {alpha}")
    elif structure not in STRUCTURES:
        raise MergeError(f"unknown structure {structure!r}; use one of {list(STRUCTURES)}")
    if averaged and len(averaged) == len(names):
        raise MergeError("average= covers every merged parameter; use method='average'")
    plain = _unflat(models[0], averaged, sum(w * _params(m, averaged) for w, m in zip(lams, models)) / sum(lams)) \
        if averaged else {}
    names = [n for n in names if n not in averaged]
    if fishers is None:
        data = _split_data(data, k)
        if data is None:
            raise MergeError(f"method={method!r} needs data=[data_1, ..., data_{k}] (or fishers=)")
        at = base if fisher_at == "base" else None
        fishers = fishers_for(models, data, names, "kfac" if method == "regmean" else structure, kind, likelihood,
                              generator, batch_size, at=at)
    else:
        fishers = list(fishers)
        _check_fishers(fishers, k, names)
        if method == "regmean" and any(getattr(F, "structure", None) != "kfac" for F in fishers):
            raise MergeError("method='regmean' uses the A factors of KFAC Fishers; pass fishers computed with "
                             "structure='kfac' (or data=)")
    thetas = [_params(m, names) for m in models]
    avg = sum(w * t for w, t in zip(lams, thetas)) / sum(lams)
    if method == "regmean":
        from .regmean import regmean

        return {**plain, **_unflat(models[0], names, regmean(fishers, thetas, lams, avg, a, eps))}
    coefs = list(lams)
    if normalize == "trace":
        coefs = [lam * fishers[i].info.size / max(float(fishers[i].trace()), 1e-300) for i, lam in enumerate(lams)]
    # ε relative to the mean diagonal of the λ-weighted mean (normalised) Fisher
    mean_diag = sum(c * float(F.trace()) for c, F in zip(coefs, fishers)) / (sum(lams) * fishers[0].info.size)
    center = _params(base, names) if prior == "base" else avg
    merged = fisher_weighted(fishers, thetas, lams, coefs, eps * mean_diag, center, dense_limit, cg_tol, cg_maxiter,
                             kron_dense_limit)
    return {**plain, **_unflat(models[0], names, merged)}


def _unflat(model, names, flat):
    named = dict(model.named_parameters())
    out, off = {}, 0
    for n in names:
        p = named[n]
        out[n] = flat[off : off + p.numel()].reshape(p.shape).to(p.dtype)
        off += p.numel()
    return out


def _load_into(model, values):
    named = dict(model.named_parameters())
    with torch.no_grad():
        for n, v in values.items():
            named[n].copy_(v)
    return model


def merge(models, data=None, method="fisher", structure="diag", weights=None, kind="exact",
          likelihood="categorical", damping=1e-6, normalize=None, fishers=None, keep=None, base=None,
          fisher_at="models", prior="average", scale=1.0, alpha=1.0, into=0, generator=None, batch_size=None,
          dense_limit=DENSE_SOLVE_LIMIT, cg_tol=1e-10, cg_maxiter=1000, average=None,
          kron_dense_limit=KRON_DENSE_LIMIT) -> torch.nn.Module:
    """Merge k models of one architecture into a new model (a copy of ``models[into]``).

    θ* = (Σᵢ λᵢ(cᵢFᵢ + εI))⁻¹ (Σᵢ λᵢcᵢFᵢθᵢ + εΣλᵢ θ_prior) for ``method="fisher"``.

    Args:
        models: k ``nn.Module`` with the same parameter names and shapes (else ``ArchitectureError``).
        data: one data set per model (``[(X1, y1), (X2, y2)]``, DataLoaders, ...) for the Fisher passes
            (k passes in all); not needed for ``average`` / ``task_arithmetic`` or with ``fishers=``.
        method: ``"fisher" | "average" | "task_arithmetic" | "regmean"``.
        structure: Fisher structure for ``"fisher"``: ``"diag" | "kfac" | "ekfac" | "block" | "dense"``
            (block by block) or ``"lowrank" | "implicit"`` (conjugate gradients, needs damping > 0).
        weights: λᵢ ≥ 0 (default 1/k each).
        kind, likelihood, generator, batch_size: passed to ``fk.fisher``.
        damping: ε relative to the mean diagonal of the λ-weighted mean Fisher (the paper's ε; it pulls
            every direction with little curvature toward ``prior``).
        normalize: ``"trace"`` rescales each Fisher to mean diagonal 1 before merging (cᵢ = P / tr Fᵢ),
            so a more confident model (smaller Fisher) does not lose its say; ``None`` keeps cᵢ = 1.
        fishers: precomputed Fishers (one per model, over the merged parameters), instead of ``data``.
        keep: names or module prefixes not merged (e.g. ``["head"]``): taken from ``models[into]``.
        base: the shared starting point θ₀ (task arithmetic, ``fisher_at="base"``, ``prior="base"``).
        fisher_at: ``"models"`` (Fᵢ at θᵢ) or ``"base"`` (Fᵢ of ``base`` on data i).
        prior: where ε pulls: ``"average"`` (Matena & Raffel) or ``"base"``.
        scale: task-arithmetic scale. alpha: RegMean's shrinkage of A's off-diagonal (1 = exact).
        average: names or module prefixes that are λ-averaged instead of Fisher-merged (e.g. a shared
            head: ``average=["head"]`` merges only the body by the Fisher); the Fishers then cover the rest.
        dense_limit, kron_dense_limit: blocks up to this many parameters are solved densely (float64
            Cholesky); larger ones by preconditioned conjugate gradients (``cg_tol``, ``cg_maxiter``).
            Kronecker (KFAC) blocks have their own, lower limit: CG never forms the matrix and is ~30×
            faster on a 64 × 65 layer (``fisherkit.merge.solve.KRON_DENSE_LIMIT``).

    Example::

        merged = fk.merge.merge([net_a, net_b], data=[(Xa, ya), (Xb, yb)], structure="diag")
    """
    values = merge_parameters(models, data, method, structure, weights, kind, likelihood, damping, normalize,
                              fishers, keep, base, fisher_at, prior, scale, alpha, generator, batch_size,
                              dense_limit, cg_tol, cg_maxiter, average, kron_dense_limit)
    if not isinstance(into, int) or not 0 <= into < len(models):
        raise MergeError(f"into must be an index into models (0..{len(models) - 1}); got {into!r}")
    return _load_into(copy.deepcopy(models[into]), values)


def with_heads(merged, models, keep) -> list[torch.nn.Module]:
    """One copy of ``merged`` per model, each carrying that model's own ``keep`` parameters (its head)."""
    models = check_models(models)
    check_models([models[0], merged])
    names = [n for n, p in models[0].named_parameters() if p.requires_grad]
    kept = check_keep(keep, names)
    out = []
    for m in models:
        named = dict(m.named_parameters())
        out.append(_load_into(copy.deepcopy(merged), {n: named[n].detach() for n in kept}))
    return out
