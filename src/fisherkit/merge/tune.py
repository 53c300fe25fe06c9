"""Choose a merge's ε on held-out data: k Fisher passes, one solve per ε, one score per ε.

    merged, scores = fk.merge.tune([net_a, net_b], data=[(Xa, ya), (Xb, yb)], score=val_accuracy,
                                   structure="kfac")

ε decides every direction the Fishers call flat — and for a non-diagonal Fisher those directions
are many (a layer with more parameters than examples is rank-deficient), so the paper's tiny ε lets
a KFAC merge wander far from the models (``docs/merging.md``: ε = 1e-6 gives 71 %, ε = 0.1 86 % on
the permuted-digits study). ``tune`` computes the Fishers once and scores the merge at every ε of a
grid on data that the caller holds out; large ε tends to the plain average, so the grid's top end is
the baseline itself.
"""

from __future__ import annotations

import copy
import math

import torch

from ._checks import MergeError, check_keep, check_models, check_number
from .core import _split_data, fishers_for, merge_parameters

DAMPINGS = (1e-6, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0)


def tune(models, data=None, score=None, dampings=DAMPINGS, structure="diag", kind="exact", likelihood="categorical",
         fishers=None, keep=None, average=None, base=None, fisher_at="models", generator=None, batch_size=None,
         into=0, **options):
    """Merge at every ε in ``dampings`` and return ``(best merged model, {ε: score})``.

    Args:
        score: ``score(model) -> float``, higher is better, on data *not* used for the Fishers and not the
            test set (e.g. a validation split of every task: the mean of the per-task accuracies).
            With ``keep=`` (per-task heads), ``score`` receives the merged copy of ``models[into]``;
            use ``fisherkit.merge.with_heads`` inside it for one copy per task.
        dampings: the ε grid (relative to the mean diagonal of the mean Fisher, as in ``merge``); ties go
            to the first in the grid.
        structure, kind, likelihood, fishers, keep, average, base, fisher_at, generator, batch_size, into:
            as in ``fisherkit.merge.merge``; the Fishers are computed once for the whole grid.
        options: further ``merge`` options (weights, normalize, prior, ...), the same at every ε.

    Example::

        def val_accuracy(m):
            return sum(accuracy(m, X, y) for X, y in val_sets) / len(val_sets)

        merged, scores = fk.merge.tune(models, data=train_sets, score=val_accuracy, structure="kfac")
    """
    models = check_models(models)
    if not callable(score):
        raise MergeError("score must be a callable score(model) -> float (higher is better), on held-out data")
    try:
        grid = [check_number(e, "every damping") for e in dampings]
    except TypeError:
        raise MergeError(f"dampings must be a list of numbers; got {dampings!r}") from None
    if not grid:
        raise MergeError("dampings is empty; give at least one ε")
    if not isinstance(into, int) or not 0 <= into < len(models):
        raise MergeError(f"into must be an index into models (0..{len(models) - 1}); got {into!r}")
    if fishers is None:
        split = _split_data(data, len(models))
        if split is None:
            raise MergeError("tune needs data=[data_1, ..., data_k] (or fishers=) for the Fishers")
        if fisher_at not in ("models", "base"):
            raise MergeError(f"fisher_at must be 'models' or 'base'; got {fisher_at!r}")
        if fisher_at == "base" and base is None:
            raise MergeError("fisher_at='base' needs base= (the shared starting point)")
        named = [n for n, p in models[0].named_parameters() if p.requires_grad]
        kept = check_keep(keep, named)
        rest = [n for n in named if n not in kept]
        averaged = check_keep(average, rest) if average is not None else []
        names = [n for n in rest if n not in averaged]
        fishers = fishers_for(models, split, names, structure, kind, likelihood, generator, batch_size,
                              at=base if fisher_at == "base" else None)
    scores, best, best_model = {}, -math.inf, None
    for eps in grid:
        values = merge_parameters(models, method="fisher", damping=eps, fishers=fishers, keep=keep, average=average,
                                  base=base, **options)
        m = copy.deepcopy(models[into])
        named = dict(m.named_parameters())
        with torch.no_grad():
            for n, v in values.items():
                named[n].copy_(v)
        s = float(score(m))
        if math.isnan(s):
            raise MergeError(f"score returned NaN at damping {eps}")
        scores[eps] = s
        if s > best:
            best, best_model = s, m
    return best_model, scores
