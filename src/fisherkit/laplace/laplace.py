"""``Laplace``: a Gaussian posterior N(θ̂, Λ⁻¹), Λ = N·F + P, around a trained network.

F is the Fisher of ``fk.fisher`` (mean over the N training points) in any block structure;
with ``kind="exact"`` it is the generalised Gauss-Newton (GGN) matrix for the categorical,
Bernoulli and Gaussian likelihoods (canonical links), ``"mc"`` its Monte-Carlo estimate and
``"empirical"`` the empirical Fisher (the uncentred gradient covariance: not the GGN; biased).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..likelihoods import Gaussian, get_likelihood
from .errors import LaplaceError, NotFittedError
from .linearized import centre_jacobian, centre_parts, chain_terms, flatten_chain, piece_fvar
from .model_utils import (batch_len, call_model, forward_with, iterate_data, jacobians, last_layer_params, slice_inputs,
                          trainable_names)
from .posterior import check_piece_sizes, pieces_from_curvature
from .predictive import link, monte_carlo, probit
from .prior import as_prior_tensor, expand_prior, prior_from_dict

STRUCTURES = ("diag", "kfac", "ekfac", "block", "dense", "lowrank")
KINDS = ("exact", "mc", "empirical")
LIKELIHOODS = ("categorical", "bernoulli", "gaussian")
METHODS = ("probit", "probit_centred", "mc", "samples", "map")


class Laplace:
    """Laplace approximation of the posterior over ``subset`` of the parameters of ``model``.

    Args:
        likelihood: ``"categorical"`` (logits), ``"bernoulli"`` (one logit) or ``"gaussian"``
            (regression; ``sigma`` is the observation noise, refittable by marginal likelihood).
        subset: ``"all"``, ``"last_layer"`` (the last ``nn.Linear``) or a list of parameter names.
        structure: ``"diag" | "kfac" | "ekfac" | "block" | "dense" | "lowrank"`` (of ``fk.fisher``).
        prior_precision: P = diag(p): a number, one value per parameter tensor, one per parameter,
            or a dict name → number.
        prior_mean: μ₀, a number or a flat tensor over the posterior parameters.
        generator: seeds ``kind="mc"`` (a fixed seed 0 by default; the global RNG is never used).
        max_memory: bytes one allocation may take, for ``fk.fisher`` and the predictive's Jacobians.

    Example:
        >>> la = Laplace(net, "categorical", subset="last_layer", structure="kfac").fit((X, y))
        >>> la.optimize_prior_precision("marglik"); probs = la.predictive(X_test, method="probit")
    """

    def __init__(self, model: nn.Module, likelihood="categorical", subset="all", structure: str = "kfac",
                 prior_precision=1.0, prior_mean=0.0, kind: str = "exact", sigma: float = 1.0,
                 mc_samples: int = 1, generator: torch.Generator | None = None, batch_size: int | None = None,
                 rank: int = 20, max_memory: float = 2**28):
        if not isinstance(model, nn.Module):
            raise LaplaceError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        if isinstance(likelihood, str) and likelihood not in LIKELIHOODS:
            raise LaplaceError(f"Laplace supports likelihoods {list(LIKELIHOODS)}; got {likelihood!r}")
        lik = get_likelihood(likelihood)
        if lik.name not in LIKELIHOODS:
            raise LaplaceError(f"Laplace supports likelihoods {list(LIKELIHOODS)}; got {lik.name!r}")
        if isinstance(likelihood, Gaussian) and sigma == 1.0:
            sigma = likelihood.sigma
        if structure not in STRUCTURES:
            raise LaplaceError(f"structure must be one of {list(STRUCTURES)}; got {structure!r}")
        if kind not in KINDS:
            raise LaplaceError(f"kind must be one of {list(KINDS)}; got {kind!r}")
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
            raise LaplaceError(f"sigma must be a positive finite number; got {sigma!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise LaplaceError(f"generator must be a torch.Generator; got {type(generator).__name__}")
        for nm, v in (("mc_samples", mc_samples), ("rank", rank)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise LaplaceError(f"{nm} must be a positive integer; got {v!r}")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
            raise LaplaceError(f"batch_size must be a positive integer or None; got {batch_size!r}")
        self.model = model
        self.likelihood = lik.name
        self.structure, self.kind = structure, kind
        self.mc_samples, self.rank, self.batch_size, self.max_memory = mc_samples, rank, batch_size, float(max_memory)
        self.generator = generator
        self.names, self.subset = self._resolve_subset(subset)
        params = dict(model.named_parameters())
        self.shapes = [tuple(params[n].shape) for n in self.names]
        self.numels = [params[n].numel() for n in self.names]
        self.n_params = sum(self.numels)
        p0 = params[self.names[0]]
        self.dtype, self.device = p0.dtype, p0.device
        if isinstance(prior_precision, dict):
            prior_precision = prior_from_dict(prior_precision, self.names)
        self.prior_precision = as_prior_tensor(prior_precision, self.numels, self.dtype, self.device)
        self.prior_mean = self._check_prior_mean(prior_mean)
        self.sigma = float(sigma)
        self._pieces = None
        self.mean = None  # θ̂, flat over ``names`` (set by fit)
        self.n_data = 0
        self.n_outputs = 0
        self.loss = None  # Σ nll at θ̂ (Gaussian: ½ Σ ‖y − f‖², the σ-free part)

    # ---- set-up ---------------------------------------------------------------------------
    def _resolve_subset(self, subset):
        names = trainable_names(self.model)
        if not names:
            raise LaplaceError("the model has no trainable parameters")
        if isinstance(subset, str):
            if subset == "all":
                return names, "all"
            if subset == "last_layer":
                return last_layer_params(self.model)[1], "last_layer"
            raise LaplaceError(f"subset must be 'all', 'last_layer' or a list of parameter names; got {subset!r}")
        if not isinstance(subset, (list, tuple)) or not subset or not all(isinstance(s, str) for s in subset):
            raise LaplaceError(f"subset must be 'all', 'last_layer' or a non-empty list of parameter names; got {subset!r}")
        unknown = [s for s in subset if s not in names]
        if unknown:
            raise LaplaceError(f"subset names {unknown} are not trainable parameters of the model")
        chosen = set(subset)
        return [n for n in names if n in chosen], "names"

    def _check_prior_mean(self, value):
        if isinstance(value, bool):
            raise LaplaceError("prior_mean must be a number or a flat tensor")
        if isinstance(value, (int, float)):
            if not math.isfinite(value):
                raise LaplaceError(f"prior_mean must be finite; got {value}")
            return torch.full((self.n_params,), float(value), dtype=self.dtype, device=self.device)
        t = torch.as_tensor(value).to(dtype=self.dtype, device=self.device)
        if t.shape != (self.n_params,) or not bool(torch.isfinite(t).all()):
            raise LaplaceError(f"prior_mean must be a number or a finite flat tensor of {self.n_params} entries; got shape {tuple(t.shape)}")
        return t.clone()

    @property
    def fitted(self) -> bool:
        return self._pieces is not None

    def _need_fit(self):
        if not self.fitted:
            raise NotFittedError("call fit(data) first (or Laplace.load)")

    def _flat_params(self) -> torch.Tensor:
        params = dict(self.model.named_parameters())
        return torch.cat([params[n].detach().reshape(-1) for n in self.names])

    def fit(self, data) -> "Laplace":
        """Fisher of ``data`` at the current parameters θ̂, the training loss at θ̂, and N.

        ``data`` must be re-iterable (a DataLoader, an (X, y) pair, a list of batches): it is read
        twice (Fisher, then loss). Returns ``self``.
        """
        from .. import api

        if iter(data) is data:
            raise LaplaceError("data is a one-shot iterator; pass a DataLoader, an (X, y) pair or a list of batches")
        params = dict(self.model.named_parameters())
        if [tuple(params[n].shape) if n in params else None for n in self.names] != self.shapes:
            raise LaplaceError("the model's parameters changed since this Laplace was created")
        lik = Gaussian(1.0) if self.likelihood == "gaussian" else self.likelihood
        gen = self.generator
        if self.kind == "mc" and gen is None:
            gen = torch.Generator(device=self.device).manual_seed(0)
        F = api.fisher(self.model, data, likelihood=lik, kind=self.kind, structure=self.structure,
                       params=self.names, generator=gen, mc_samples=self.mc_samples,
                       batch_size=self.batch_size, rank=min(self.rank, self.n_params), max_memory=self.max_memory)
        loss, n, n_out = self._training_loss(data)
        if n != F.num_samples:
            raise LaplaceError(f"the data gave {n} points to the loss but {F.num_samples} to the Fisher")
        pieces = pieces_from_curvature(F)
        check_piece_sizes(pieces, self.n_params)
        self._pieces, self.loss, self.n_data, self.n_outputs = pieces, loss, n, n_out
        self.mean = self._flat_params().clone()
        return self

    @torch.no_grad()
    def _training_loss(self, data):
        total = torch.zeros((), dtype=torch.float64)
        n, n_out = 0, 0
        for X, y in iterate_data(data, self.batch_size):
            f = call_model(self.model, X)
            n_out = f.shape[1]
            total += float(self._nll_sum(f, y))
            n += f.shape[0]
        return total.to(self.dtype), n, n_out

    def _nll_sum(self, f, y):
        f64 = f.double()
        if self.likelihood == "categorical":
            return torch.nn.functional.cross_entropy(f64, y.to(f.device).long(), reduction="sum")
        y = y.to(f.device).double().reshape(f.shape)
        if self.likelihood == "bernoulli":
            return torch.nn.functional.binary_cross_entropy_with_logits(f64, y, reduction="sum")
        return 0.5 * ((y - f64) ** 2).sum()

    # ---- the posterior ------------------------------------------------------------------------
    def _p(self, prior_precision=None):
        p = self.prior_precision if prior_precision is None else prior_precision
        if not isinstance(p, torch.Tensor):
            p = as_prior_tensor(p, self.numels, self.dtype, self.device)
        return expand_prior(p, self.numels)

    def _s(self, sigma=None):
        if self.likelihood != "gaussian":
            return 1.0
        sig = self.sigma if sigma is None else sigma
        return 1.0 / sig**2

    def _over_pieces(self, fn, p):
        return [fn(pc, p[pc.idx]) for pc in self._pieces]

    def log_det_posterior_precision(self, prior_precision=None, sigma=None) -> torch.Tensor:
        self._need_fit()
        p, s = self._p(prior_precision), self._s(sigma)
        return sum(self._over_pieces(lambda pc, pb: pc.logdet(pb, s), p))

    def log_likelihood(self, sigma=None) -> torch.Tensor:
        """log p(D | θ̂) = −Σₙ nll; for a Gaussian −(½Σ‖y−f‖²)/σ² − N·C·log(σ√(2π))."""
        self._need_fit()
        if self.likelihood != "gaussian":
            return -self.loss
        sig = torch.as_tensor(self.sigma if sigma is None else sigma, dtype=self.dtype, device=self.device)
        return -self.loss / sig**2 - self.n_data * self.n_outputs * torch.log(sig * math.sqrt(2 * math.pi))

    def log_marginal_likelihood(self, prior_precision=None, sigma=None) -> torch.Tensor:
        """The Laplace evidence log p(D) ≈ log p(D|θ̂) − ½[(θ̂−μ₀)ᵀP(θ̂−μ₀) + log det Λ − log det P].

        (The ±P/2·log 2π of the prior and the Laplace normaliser cancel.) Differentiable in
        ``prior_precision`` and ``sigma`` when they are tensors that require grad.
        """
        self._need_fit()
        p = self._p(prior_precision)
        delta = self.mean - self.prior_mean
        scatter = (delta * p * delta).sum()
        return self.log_likelihood(sigma) - 0.5 * (self.log_det_posterior_precision(prior_precision, sigma)
                                                   - torch.log(p).sum() + scatter)

    def _assemble(self, parts) -> torch.Tensor:
        out = torch.empty(self.n_params, dtype=self.dtype, device=self.device)
        for pc, part in zip(self._pieces, parts):
            out[pc.idx] = part
        return out

    def posterior_variance(self) -> torch.Tensor:
        """diag Λ⁻¹ over the posterior parameters (flat)."""
        self._need_fit()
        p, s = self._p(), self._s()
        return self._assemble(self._over_pieces(lambda pc, pb: pc.cov_diag(pb, s), p))

    def solve(self, v: torch.Tensor) -> torch.Tensor:
        """Λ⁻¹ v (flat v over the posterior parameters)."""
        self._need_fit()
        if not isinstance(v, torch.Tensor) or v.shape != (self.n_params,):
            raise LaplaceError(f"v must be a flat tensor of {self.n_params} entries")
        p, s = self._p(), self._s()
        return self._assemble(self._over_pieces(lambda pc, pb: pc.solve(v[pc.idx], pb, s), p))

    def precision_matrix(self) -> torch.Tensor:
        """Λ as a dense P × P matrix (for checks on small models; refused above 20,000 parameters)."""
        self._need_fit()
        if self.n_params > 20_000:
            raise LaplaceError(f"a dense {self.n_params}×{self.n_params} precision is above the limit of 20,000")
        p, s = self._p(), self._s()
        eye = torch.eye(self.n_params, dtype=self.dtype, device=self.device)
        cols = []
        for e in eye:
            cols.append(self._assemble(self._over_pieces(lambda pc, pb: pc.mv(e[pc.idx], pb, s), p)))
        return torch.stack(cols, 1)

    def sample(self, n: int = 100, generator: torch.Generator | None = None) -> torch.Tensor:
        """n parameter vectors θ ~ N(θ̂, Λ⁻¹), as rows of a [n, P] tensor (flat over ``names``).

        Seeded by ``generator`` (a fixed seed 0 without one; the global RNG is never used).
        Use ``la.unflatten(theta)`` to get a dict for ``torch.func.functional_call``.
        """
        self._need_fit()
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise LaplaceError(f"n must be a positive integer; got {n!r}")
        gen = generator if generator is not None else torch.Generator(device=self.device).manual_seed(0)
        z = torch.randn(n, self.n_params, generator=gen, dtype=self.dtype, device=self.device)
        p, s = self._p(), self._s()
        parts = self._over_pieces(lambda pc, pb: pc.sample(z[:, pc.idx], pb, s), p)
        out = torch.empty_like(z)
        for pc, part in zip(self._pieces, parts):
            out[:, pc.idx] = part
        return self.mean + out

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: t.reshape(s) for n, t, s in zip(self.names, torch.split(theta, self.numels), self.shapes)}

    # ---- predictions -------------------------------------------------------------------------
    def _chunk(self, n_out: int) -> int:
        per_row = max(1, n_out * self.n_params * torch.finfo(self.dtype).bits // 8 * 3)
        return max(1, int(self.max_memory // per_row))

    def functional_variance(self, X, prior_precision=None, sigma=None, diagonal: bool = False, centred: bool = False):
        """f̂ = f(X; θ̂) [B, C] and the linearised output covariance J Λ⁻¹ Jᵀ [B, C, C].

        With ``diagonal=True`` only the variances diag(J Λ⁻¹ Jᵀ) [B, C] (all the probit and the
        regression predictive need; C times less memory and work, which matters at 1,000 classes).
        With ``centred=True`` the covariance of the centred outputs f − mean_c f_c, Π J Λ⁻¹ Jᵀ Π with
        Π = I − 11ᵀ/C (the part of the covariance a softmax can see; computed as (ΠJ) Λ⁻¹ (ΠJ)ᵀ).

        Linear layers of an ``nn.Sequential`` get J's rank-one structure (no per-sample Jacobians;
        see ``fisherkit.laplace.linearized``); everything else torch.func Jacobians, in chunks.
        """
        self._need_fit()
        p, s = self._p(prior_precision), self._s(sigma)
        n = batch_len(X)
        numels = dict(zip(self.names, self.numels))
        chain = flatten_chain(self.model) is not None and isinstance(X, torch.Tensor)
        step = self.batch_size or n
        if not chain:
            step = min(step, self._chunk(max(self.n_outputs, 1)))
        fs, vs = [], []
        for lo in range(0, n, step):
            x = slice_inputs(X, lo, lo + step)
            terms = chain_terms(self.model, self.names, x) if chain else None
            if terms is not None:
                f, parts = terms
                if centred:
                    parts = centre_parts(parts)
                with torch.no_grad():
                    v = sum(piece_fvar(pc, numels, parts, p[pc.idx], s, diagonal) for pc in self._pieces)
            else:
                f, J = jacobians(self.model, self.names, x)
                if centred:
                    J = centre_jacobian(J)
                with torch.no_grad():
                    v = sum(pc.fvar(J[..., pc.idx], p[pc.idx], s, diagonal) for pc in self._pieces)
            fs.append(f.detach())
            vs.append(v.detach())
        return torch.cat(fs), torch.cat(vs)

    def predictive(self, X, method: str = "probit", n_samples: int = 100, generator: torch.Generator | None = None):
        """Predictive distribution at inputs X.

        Classification: class probabilities [B, C] ([B, 1] for Bernoulli: p(y = 1)).
        ``"probit"`` / ``"mc"``: the linearised (GLM) predictive with the probit approximation or
        ``n_samples`` Monte-Carlo draws of the outputs; ``"probit_centred"`` (categorical only): the
        probit approximation applied to the covariance of the centred logits f − mean_c f_c, which
        has the same softmax (Π J Λ⁻¹ Jᵀ Π, see ``functional_variance``): the plain probit also
        counts the variance of the logits' common shift, which the softmax ignores; ``"samples"``: the network itself at
        ``n_samples`` parameter draws θ ~ N(θ̂, Λ⁻¹) (not linearised); ``"map"``: θ̂ alone.
        Regression (Gaussian): ``(mean, variance)`` of y, each [B, C]: the closed-form linearised
        predictive f̂, diag(J Λ⁻¹ Jᵀ) + σ² (``"samples"``: moments over sampled networks + σ²).
        Random methods are seeded by ``generator`` (fixed seed 0 without one; never the global RNG).
        """
        self._need_fit()
        if method not in METHODS:
            raise LaplaceError(f"method must be one of {list(METHODS)}; got {method!r}")
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise LaplaceError(f"n_samples must be a positive integer; got {n_samples!r}")
        if method == "map":
            with torch.no_grad():
                f = call_model(self.model, X)
            return (f, torch.full_like(f, self.sigma**2)) if self.likelihood == "gaussian" else link(f, self.likelihood)
        if method == "samples":
            return self._sampled_predictive(X, n_samples, generator)
        if method == "probit_centred":
            if self.likelihood != "categorical":
                raise LaplaceError(f"method='probit_centred' needs likelihood='categorical'; got {self.likelihood!r}")
            f, var = self.functional_variance(X, diagonal=True, centred=True)
            return probit(f, var, self.likelihood)
        if self.likelihood == "gaussian" or method == "probit":
            f, var = self.functional_variance(X, diagonal=True)
            if self.likelihood == "gaussian":
                return f, var + self.sigma**2
            return probit(f, var, self.likelihood)
        f, fvar = self.functional_variance(X)
        gen = generator if generator is not None else torch.Generator(device=f.device).manual_seed(0)
        return monte_carlo(f, fvar, self.likelihood, n_samples, gen)

    @torch.no_grad()
    def _sampled_predictive(self, X, n_samples, generator):
        thetas = self.sample(n_samples, generator)
        outs = []
        for th in thetas:
            f = forward_with(self.model, self.unflatten(th), X)
            outs.append(f if self.likelihood == "gaussian" else link(f, self.likelihood))
        outs = torch.stack(outs)
        if self.likelihood == "gaussian":
            return outs.mean(0), outs.var(0, unbiased=False) + self.sigma**2
        return outs.mean(0)

    # ---- tuning, io ---------------------------------------------------------------------------
    def optimize_prior_precision(self, method: str = "marglik", **kwargs) -> "Laplace":
        """Tune P (and σ for a Gaussian with ``fit_sigma=True``); see ``fisherkit.laplace.tuning``."""
        from .tuning import optimize_prior_precision

        optimize_prior_precision(self, method, **kwargs)
        return self

    def save(self, path) -> None:
        """safetensors + JSON metadata, written atomically; ``Laplace.load(path, model)`` reads it."""
        from .io import save

        save(self, path)

    @classmethod
    def load(cls, path, model: nn.Module) -> "Laplace":
        from .io import load

        return load(path, model)

    def __repr__(self) -> str:
        state = f"N={self.n_data}" if self.fitted else "not fitted"
        return (f"Laplace({self.likelihood}, subset={self.subset}, structure={self.structure}, "
                f"kind={self.kind}, P={self.n_params}, {state})")
