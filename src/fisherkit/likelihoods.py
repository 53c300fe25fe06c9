"""Output distributions p(y | f(x)) of a model's output f.

Each likelihood gives, for outputs ``f`` of shape ``[B, *E, C]`` (``E`` extra dimensions such as
sequence positions, whose log-probabilities are summed per sample):

* ``nll(f, y)``: per-sample negative log-likelihood, shape ``[B]`` (summed over ``E``);
* ``sample(f, generator)``: labels y ~ p(y | f), seeded by a ``torch.Generator``;
* ``residual(f, y)``: ∂ nll / ∂f, shape of ``f`` (the output-space direction of the score);
* ``sqrt_fisher(f)``: S of shape ``[B, *E, C, K]`` (categorical: K = C − 1) with Λ = S Sᵀ the Fisher of p(y|f) with respect
  to f (``Λ = E_y[r rᵀ] = ∂² nll / ∂f²``).

With J = ∂f/∂θ, the true Fisher of one point is Jᵀ Λ J = Σ_k (Jᵀ s_k)(Jᵀ s_k)ᵀ: one backward
direction per column of S.
"""

from __future__ import annotations

import math

import torch

from .errors import FisherkitError, NonFiniteError, ShapeError, SupportError


class Likelihood:
    """Base class. Subclasses implement ``nll``, ``sample``, ``residual`` and ``sqrt_fisher``."""

    name = "likelihood"

    def check(self, f: torch.Tensor, y: torch.Tensor | None = None, batch: int | None = None) -> None:
        """Raise a clear error when outputs or labels do not fit this likelihood."""
        where = f" in batch {batch}" if batch is not None else ""
        if f.dim() < 2:
            raise ShapeError(
                f"{self.name} likelihood needs outputs of shape [batch, ..., classes]; got {tuple(f.shape)}{where}"
            )
        if not torch.isfinite(f).all():
            idx = (~torch.isfinite(f)).nonzero()[0].tolist()
            raise NonFiniteError(f"model output is not finite at index {idx}{where}")

    def _check_same_shape(self, f: torch.Tensor, y: torch.Tensor, batch: int | None) -> str:
        """Targets shaped like the outputs (Gaussian, Bernoulli); returns the ' in batch i' suffix."""
        where = f" in batch {batch}" if batch is not None else ""
        if tuple(y.shape) != tuple(f.shape):
            raise ShapeError(
                f"{self.name} targets of shape {tuple(y.shape)} do not fit outputs of shape {tuple(f.shape)}{where}"
            )
        return where

    def nll(self, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, f: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def residual(self, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sqrt_fisher(self, f: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def kl(self, f_a: torch.Tensor, f_b: torch.Tensor) -> torch.Tensor:
        """Per-sample KL[p(y | f_a) ‖ p(y | f_b)], shape ``[B]`` (summed over extra dimensions)."""
        raise NotImplementedError

    def output_fisher(self, f: torch.Tensor) -> torch.Tensor:
        """Λ = S Sᵀ, shape ``[B, *E, C, C]``."""
        s = self.sqrt_fisher(f)
        return s @ s.transpose(-1, -2)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def to_config(self) -> dict:
        return {"name": self.name}


def _sum_extra(x: torch.Tensor) -> torch.Tensor:
    """Sum a ``[B, *E]`` tensor to ``[B]``."""
    return x.reshape(x.shape[0], -1).sum(1) if x.dim() > 1 else x


class Categorical(Likelihood):
    """Softmax over the last dimension of logits f; nll = −log softmax(f)_y (= CrossEntropyLoss).

    Λ = diag(p) − p pᵀ, with square root S = diag(√p) − p √pᵀ (exact, finite even when p is
    one-hot, unlike a Cholesky or cumulative-sum factor).
    """

    name = "categorical"

    def check(self, f, y=None, batch=None):
        super().check(f, y, batch)
        if f.shape[-1] < 2:
            raise ShapeError(
                f"categorical likelihood needs at least 2 logits per sample; the model outputs shape {tuple(f.shape)} "
                "(its Fisher would be 0: for one logit per sample use likelihood='bernoulli')"
            )
        if y is None:
            return
        where = f" in batch {batch}" if batch is not None else ""
        if y.dtype.is_floating_point or y.dtype == torch.bool:
            raise SupportError(f"categorical labels must be integer class indices; got dtype {y.dtype}{where}")
        if tuple(y.shape) != tuple(f.shape[:-1]):
            raise ShapeError(
                f"categorical labels of shape {tuple(y.shape)} do not fit outputs of shape {tuple(f.shape)}"
                f"{where} (expected labels of shape {tuple(f.shape[:-1])})"
            )
        c = f.shape[-1]
        bad = (y < 0) | (y >= c)
        if bad.any():
            i = bad.nonzero()[0].tolist()
            raise SupportError(f"label {int(y[tuple(i)])} at index {i}{where} is out of range for {c} classes")

    def nll(self, f, y):
        logp = torch.log_softmax(f, dim=-1)
        return -_sum_extra(logp.gather(-1, y.unsqueeze(-1)).squeeze(-1))

    def sample(self, f, generator=None):
        # inverse CDF: y = #{c : P(Y ≤ c) < u}, u ~ U(0, 1) — one uniform per label, about half the
        # cost of torch.multinomial on small batches
        p = torch.softmax(f.detach(), dim=-1)
        u = torch.rand(p.shape[:-1] + (1,), generator=generator, dtype=p.dtype, device=p.device)
        return (p.cumsum(-1) < u).sum(-1).clamp_max(p.shape[-1] - 1)

    def residual(self, f, y):
        p = torch.softmax(f, dim=-1)
        return p.scatter_add(-1, y.unsqueeze(-1), p.new_full(y.shape + (1,), -1.0))

    def kl(self, f_a, f_b):
        la, lb = torch.log_softmax(f_a, -1), torch.log_softmax(f_b, -1)
        return _sum_extra((la.exp() * (la - lb)).sum(-1))

    def sqrt_fisher(self, f):
        """S with C − 1 columns (Λ = diag(p) − p pᵀ has rank C − 1, so the exact kind needs one backward
        direction fewer per position): S = diag(√p) H with H the columns of a Householder reflection R
        other than the k-th, k = argmax p. R = I − 2uuᵀ/‖u‖² with u = √p + e_k maps √p to −e_k, so its
        other columns are orthonormal and orthogonal to √p: H Hᵀ = I − √p√pᵀ and S Sᵀ = diag(p) − p pᵀ.
        Reflecting about the largest entry keeps ‖u‖² = 2(1 + √p_k) ≥ 2: no cancellation for confident
        predictions (where a cumulative-sum factor turns NaN)."""
        p = torch.softmax(f.detach(), dim=-1)
        c = p.shape[-1]
        q = p.sqrt()
        k = q.argmax(-1, keepdim=True)
        u = q.scatter_add(-1, k, torch.ones_like(k, dtype=q.dtype))  # √p + e_k
        r = torch.eye(c, dtype=q.dtype, device=q.device) - (2 / (u * u).sum(-1, keepdim=True)).unsqueeze(-1) * (
            u.unsqueeze(-1) * u.unsqueeze(-2))
        cols = torch.arange(c - 1, device=q.device)
        cols = cols + (cols >= k).to(cols.dtype)  # every column but k, per position: [..., C − 1]
        h = r.gather(-1, cols.unsqueeze(-2).expand(*r.shape[:-1], c - 1))
        return q.unsqueeze(-1) * h


class Gaussian(Likelihood):
    """y ~ N(f, σ² I); nll = ½‖y − f‖²/σ² (the constant dropped). Λ = I/σ², S = I/σ."""

    name = "gaussian"

    def __init__(self, sigma: float = 1.0):
        if not (sigma > 0 and math.isfinite(sigma)):
            raise ValueError(f"Gaussian sigma must be positive and finite; got {sigma}")
        self.sigma = float(sigma)

    def check(self, f, y=None, batch=None):
        super().check(f, y, batch)
        if y is None:
            return
        where = self._check_same_shape(f, y, batch)
        if not torch.isfinite(y).all():
            raise NonFiniteError(f"gaussian target is not finite at index {(~torch.isfinite(y)).nonzero()[0].tolist()}{where}")

    def nll(self, f, y):
        return 0.5 * _sum_extra(((y - f) ** 2).sum(-1)) / self.sigma**2

    def sample(self, f, generator=None):
        noise = torch.randn(f.shape, generator=generator, dtype=f.dtype, device=f.device)
        return f.detach() + self.sigma * noise

    def residual(self, f, y):
        return (f - y) / self.sigma**2

    def kl(self, f_a, f_b):
        return 0.5 * _sum_extra(((f_a - f_b) ** 2).sum(-1)) / self.sigma**2

    def sqrt_fisher(self, f):
        eye = torch.eye(f.shape[-1], dtype=f.dtype, device=f.device) / self.sigma
        return eye.expand(*f.shape, f.shape[-1])

    def __repr__(self):
        return f"Gaussian(sigma={self.sigma})"

    def to_config(self):
        return {"name": self.name, "sigma": self.sigma}


class Bernoulli(Likelihood):
    """Independent Bernoulli per output with logits f (multi-label, = BCEWithLogitsLoss summed).

    Λ = diag(p(1 − p)), S = diag(√(p(1 − p))).
    """

    name = "bernoulli"

    def check(self, f, y=None, batch=None):
        super().check(f, y, batch)
        if y is None:
            return
        where = self._check_same_shape(f, y, batch)
        bad = (y != 0) & (y != 1)
        if bad.any():
            i = bad.nonzero()[0].tolist()
            raise SupportError(f"bernoulli target {float(y[tuple(i)])} at index {i}{where} is not 0 or 1")

    def nll(self, f, y):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(f, y.to(f.dtype), reduction="none")
        return _sum_extra(loss.sum(-1))

    def sample(self, f, generator=None):
        p = torch.sigmoid(f.detach())
        u = torch.rand(p.shape, generator=generator, dtype=p.dtype, device=p.device)
        return (u < p).to(f.dtype)

    def residual(self, f, y):
        return torch.sigmoid(f) - y.to(f.dtype)

    def kl(self, f_a, f_b):
        pa = torch.sigmoid(f_a)
        lpa, lpb = torch.nn.functional.logsigmoid(f_a), torch.nn.functional.logsigmoid(f_b)
        lqa, lqb = torch.nn.functional.logsigmoid(-f_a), torch.nn.functional.logsigmoid(-f_b)
        return _sum_extra((pa * (lpa - lpb) + (1 - pa) * (lqa - lqb)).sum(-1))

    def sqrt_fisher(self, f):
        p = torch.sigmoid(f.detach())
        return torch.diag_embed((p * (1 - p)).sqrt())


_BY_NAME = {"categorical": Categorical, "gaussian": Gaussian, "bernoulli": Bernoulli}


def get_likelihood(likelihood: str | Likelihood | dict) -> Likelihood:
    """Resolve ``"categorical" | "gaussian" | "bernoulli"``, a config dict, or a ``Likelihood``."""
    if isinstance(likelihood, Likelihood):
        return likelihood
    if isinstance(likelihood, dict):
        cfg = dict(likelihood)
        name = cfg.pop("name", None)
        if name not in _BY_NAME:
            raise FisherkitError(f"likelihood config {likelihood!r} names no known likelihood; use one of {sorted(_BY_NAME)}")
        try:
            return _BY_NAME[name](**cfg)
        except TypeError as e:
            raise FisherkitError(f"bad options for the {name} likelihood: {e}") from None
    if isinstance(likelihood, str) and likelihood.lower() in _BY_NAME:
        return _BY_NAME[likelihood.lower()]()
    raise FisherkitError(
        f"unknown likelihood {likelihood!r}; use one of {sorted(_BY_NAME)} or a fisherkit.Likelihood object"
    )
