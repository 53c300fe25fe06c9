"""Query strategies with one interface: ``strategy.select(model, X_pool, k) -> indices``.

Each strategy scores every pool point (higher = more worth labelling), keeps the scores in
``strategy.scores_`` and returns the indices of the k points it picks (a ``LongTensor``). Scores,
for softmax probabilities p = softmax(f(x)):

* ``Random``: uniform noise (seeded);  ``LeastConfidence``: 1 − max_y p_y;
* ``Margin``: −(p₍₁₎ − p₍₂₎), the gap between the two most probable classes, negated;
* ``Entropy``: H[p] = −Σ_y p_y log p_y;
* ``BALD`` (Gal et al. 2017): I[y; θ] ≈ H[p̄] − (1/T) Σ_t H[p_t] over T MC-dropout passes;
* ``EGL``: Σ_y p_y ‖∇θ ℓ(x, y)‖² (see ``egl_scores``), top-k or diversified over clusters.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..choices import as_generator
from ..engine.taps import InputDropout
from ..errors import FisherkitError
from ._checks import as_pool, check_k, check_outputs, eval_mode, pool_arg
from .scores import egl_scores, last_layer_features


class Strategy:
    """Base class: subclasses implement ``score(model, X, X_labeled)``; ``select`` takes the top k."""

    name = "strategy"

    def score(self, model: nn.Module, X: torch.Tensor, X_labeled: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def select(self, model: nn.Module, data=None, k: int | None = None, X_labeled=None, X_pool=None) -> torch.Tensor:
        """Indices (into ``data``, the unlabelled pool ``[N, ...]``) of the k points to label next; scores
        kept in ``self.scores_``. (``X_pool=`` is the older name of ``data``.)"""
        X = as_pool(pool_arg(data, X_pool), model)
        k = check_k(k, X.shape[0])
        XL = None if X_labeled is None or len(X_labeled) == 0 else as_pool(X_labeled, model, "labelled set")
        self.scores_ = self.score(model, X, XL).detach()
        return self.pick(model, X, k, XL)

    def pick(self, model, X, k, X_labeled):
        return torch.topk(self.scores_, k).indices

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@torch.no_grad()
def predict_proba(model: nn.Module, X: torch.Tensor, temperature: float = 1.0, batch_size: int = 8192) -> torch.Tensor:
    """Softmax probabilities ``[N, C]`` of the model in eval mode (logits divided by ``temperature``)."""
    with eval_mode(model):
        out = torch.cat([check_outputs(model(X[s : s + batch_size]), "categorical") for s in range(0, X.shape[0], batch_size)])
    return torch.softmax(out / temperature, dim=-1)


def entropy(p: torch.Tensor) -> torch.Tensor:
    """H[p] = −Σ p log p along the last dimension (0 log 0 = 0)."""
    return -(p * torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))).sum(-1)


class Random(Strategy):
    """Uniformly random points, seeded: the baseline every strategy must beat."""

    name = "random"

    def __init__(self, generator=None, seed=None):
        self.generator, self.seed = as_generator(generator, seed, owner="Random")

    def score(self, model, X, X_labeled=None):
        return torch.rand(X.shape[0], generator=self.generator, dtype=torch.float64)

    def __repr__(self):
        return f"Random(generator={self.seed})"


class LeastConfidence(Strategy):
    """1 − max_y p(y|x)."""

    name = "least_confidence"

    def score(self, model, X, X_labeled=None):
        return 1 - predict_proba(model, X).max(-1).values


class Margin(Strategy):
    """−(p₍₁₎ − p₍₂₎): small gap between the two most probable classes first."""

    name = "margin"

    def score(self, model, X, X_labeled=None):
        top = predict_proba(model, X).topk(2, dim=-1).values
        return -(top[:, 0] - top[:, 1])


class Entropy(Strategy):
    """H[p(y|x)], the predictive entropy."""

    name = "entropy"

    def score(self, model, X, X_labeled=None):
        return entropy(predict_proba(model, X))


class BALD(Strategy):
    """Bayesian active learning by disagreement with MC dropout (Houlsby et al. 2011, Gal et al. 2017).

    score(x) = H[(1/T) Σ_t p_t] − (1/T) Σ_t H[p_t], with p_t the softmax under the t-th dropout mask.
    The model's own Dropout layers are switched on (everything else stays in eval mode); a model
    without Dropout gets dropout of rate ``p`` on the input of each Linear layer after the first.
    """

    name = "bald"

    def __init__(self, n_samples: int = 20, p: float = 0.2, generator=None, seed=None):
        if n_samples < 2:
            raise FisherkitError(f"BALD needs at least 2 MC-dropout samples; got {n_samples}")
        if not 0 < p < 1:
            raise FisherkitError(f"BALD dropout rate must be in (0, 1); got {p}")
        self.generator, self.seed = as_generator(generator, seed, owner="BALD")
        self.n_samples, self.p, self._calls = n_samples, p, 0

    @torch.no_grad()
    def score(self, model, X, X_labeled=None):
        drops = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
        self._calls += 1
        probs = []
        with eval_mode(model), torch.random.fork_rng(devices=[]):
            # dropout draws from the global RNG: forked (the caller's stream is untouched), seeded per call
            torch.manual_seed(self.seed * 100003 + self._calls)
            for m in drops:
                m.train()
            ctx = InputDropout(model, self.p) if not drops else _Null()
            with ctx:
                for _ in range(self.n_samples):
                    probs.append(torch.softmax(check_outputs(model(X), "categorical"), -1))
        P = torch.stack(probs)
        return entropy(P.mean(0)) - entropy(P).mean(0)

    def __repr__(self):
        return f"BALD(n_samples={self.n_samples}, p={self.p})"


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _Tempered(nn.Module):
    """f(x)/T: a model whose softmax is flattened (T > 1) or sharpened (T < 1)."""

    def __init__(self, model: nn.Module, temperature: float):
        super().__init__()
        self.model, self.temperature = model, temperature

    def forward(self, x):
        return self.model(x) / self.temperature


def kmeans(Z: torch.Tensor, k: int, generator: torch.Generator, iters: int = 20) -> torch.Tensor:
    """Cluster labels ``[N]`` from Lloyd's k-means with k-means++ seeding (squared Euclidean)."""
    n = Z.shape[0]
    centers = [int(torch.randint(n, (1,), generator=generator))]
    d2 = (Z - Z[centers[0]]).pow(2).sum(-1)
    for _ in range(1, k):
        w = d2.clamp_min(0)
        i = int(torch.multinomial(w / w.sum(), 1, generator=generator)) if w.sum() > 0 else int(torch.randint(n, (1,), generator=generator))
        centers.append(i)
        d2 = torch.minimum(d2, (Z - Z[i]).pow(2).sum(-1))
    C = Z[centers].clone()
    for _ in range(iters):
        lab = torch.cdist(Z, C).argmin(1)
        newC = torch.zeros_like(C).index_add_(0, lab, Z)
        cnt = torch.bincount(lab, minlength=k).to(Z.dtype)
        keep = cnt > 0
        newC[keep] /= cnt[keep].unsqueeze(1)
        newC[~keep] = C[~keep]
        if torch.allclose(newC, C):
            break
        C = newC
    return torch.cdist(Z, C).argmin(1)


class EGL(Strategy):
    """Expected gradient length: Σ_y p(y|x) ‖∇θ ℓ(x, y)‖², the trace of the point's Fisher.

    ``diversity="topk"`` takes the k highest scores (redundant picks are possible: near-duplicate
    points score alike). ``diversity="cluster"`` takes the ``candidates·k`` best, clusters their
    last-layer inputs into k groups (k-means++) and keeps the best of each group. ``temperature``
    divides the logits before scoring (T > 1 softens an over-confident network).
    ``scope`` and ``top_classes`` are passed to ``egl_scores``.
    """

    name = "egl"

    def __init__(self, scope: str = "all", top_classes: int | None = None, diversity: str = "topk",
                 candidates: int = 10, temperature: float = 1.0, generator=None, likelihood: str = "categorical",
                 seed=None):
        if diversity not in ("topk", "cluster"):
            raise FisherkitError(f"unknown EGL diversity {diversity!r}; use 'topk' or 'cluster'")
        if not (temperature > 0 and math.isfinite(temperature)):
            raise FisherkitError(f"temperature must be positive and finite; got {temperature}")
        if candidates < 1:
            raise FisherkitError(f"candidates must be at least 1; got {candidates}")
        self.scope, self.top_classes, self.diversity = scope, top_classes, diversity
        self.candidates, self.temperature, self.likelihood = candidates, temperature, likelihood
        self.generator, self.seed = as_generator(generator, seed, owner="EGL")

    def score(self, model, X, X_labeled=None):
        m = model if self.temperature == 1.0 else _Tempered(model, self.temperature)
        return egl_scores(m, X, likelihood=self.likelihood, scope=self.scope, top_classes=self.top_classes)

    def pick(self, model, X, k, X_labeled):
        if self.diversity == "topk" or k == 1:
            return torch.topk(self.scores_, k).indices
        m = min(X.shape[0], self.candidates * k)
        cand = torch.topk(self.scores_, m).indices
        h = last_layer_features(model, X[cand])[0].double()
        lab = kmeans(h, k, self.generator)
        chosen = []
        for c in range(k):
            members = (lab == c).nonzero().flatten()  # cand is sorted by score: first member is best
            if len(members):
                chosen.append(int(cand[members[0]]))
        rest = [int(i) for i in cand if int(i) not in set(chosen)]
        chosen += rest[: k - len(chosen)]
        return torch.tensor(chosen, dtype=torch.long)

    def __repr__(self):
        return f"EGL(scope={self.scope!r}, diversity={self.diversity!r}, temperature={self.temperature})"
