"""Choosing the prior precision P (and the Gaussian noise σ) after ``fit``.

* ``"marglik"``: maximise the Laplace evidence log p(D | P, σ) by Adam on log P (and log σ):
  every step reuses the factorisation of H, so a step costs one log-determinant.
* ``"grid"``: the evidence on a grid of scalar P (log-spaced); the best grid point.
* ``"cv"``: the predictive NLL on held-out ``val_data`` on a grid of scalar P (what laplace-torch
  calls grid search; a post-hoc Laplace has one θ̂, so "cross-validation" means a validation set),
  with the probit predictive (``predictive="probit"``) or the centred one (``"probit_centred"``).
"""

from __future__ import annotations

import math

import torch

from .errors import LaplaceError
from .model_utils import iterate_data
from .predictive import probit
from .prior import PRIOR_STRUCTURES, reshape_prior
from .prior import prior_structure as structure_of

TUNING_METHODS = ("marglik", "grid", "cv")


def _grid(grid, dtype, device):
    if grid is None:
        return torch.logspace(-4, 4, 41, dtype=dtype, device=device)
    g = torch.as_tensor(grid, dtype=dtype, device=device).reshape(-1)
    if g.numel() == 0 or not bool(torch.isfinite(g).all()) or bool((g <= 0).any()):
        raise LaplaceError("grid must be a non-empty sequence of positive finite prior precisions")
    return g


def optimize_prior_precision(la, method: str = "marglik", *, prior_structure: str | None = None,
                             n_steps: int = 300, lr: float = 0.1, grid=None, val_data=None,
                             fit_sigma: bool = False, predictive: str = "probit"):
    """Set ``la.prior_precision`` (and ``la.sigma``) by ``method``; returns the history as a list of dicts.

    ``prior_structure`` (``"scalar" | "layerwise" | "diagonal"``, default: the current one) is
    what ``"marglik"`` tunes; ``"grid"`` and ``"cv"`` tune a scalar.
    """
    la._need_fit()
    structure = prior_structure
    if method not in TUNING_METHODS:
        raise LaplaceError(f"method must be one of {list(TUNING_METHODS)}; got {method!r}")
    if structure is not None and structure not in PRIOR_STRUCTURES:
        raise LaplaceError(f"prior_structure must be one of {list(PRIOR_STRUCTURES)}; got {structure!r}")
    if fit_sigma and la.likelihood != "gaussian":
        raise LaplaceError("fit_sigma=True needs likelihood='gaussian'")
    if fit_sigma and method == "cv":
        raise LaplaceError("fit_sigma is only available with method='marglik' or 'grid'")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise LaplaceError(f"n_steps must be a positive integer; got {n_steps!r}")
    if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise LaplaceError(f"lr must be a positive number; got {lr!r}")
    if predictive not in ("probit", "probit_centred"):
        raise LaplaceError(f"predictive must be 'probit' or 'probit_centred'; got {predictive!r}")
    if predictive == "probit_centred" and la.likelihood != "categorical":
        raise LaplaceError("predictive='probit_centred' needs likelihood='categorical'")
    if method == "cv" and val_data is None:
        raise LaplaceError("method='cv' needs val_data=(X_val, y_val) (or an iterable of batches)")
    if method != "marglik" and structure not in (None, "scalar"):
        raise LaplaceError(f"method={method!r} tunes a scalar prior; use method='marglik' for {structure!r}")
    if method == "marglik":
        hist = _marglik_adam(la, structure or structure_of(la.prior_precision, la.numels), n_steps, lr, fit_sigma)
    elif method == "grid":
        hist = _grid_search(la, _grid(grid, la.dtype, la.device), fit_sigma,
                            lambda p: float(la.log_marginal_likelihood(p)))
    else:
        hist = _grid_search(la, _grid(grid, la.dtype, la.device), False, lambda p: -_val_nll(la, p, val_data, predictive == "probit_centred"))
    la.tuning_history_ = hist
    return hist


def _marglik_adam(la, structure, n_steps, lr, fit_sigma):
    start = reshape_prior(la.prior_precision, structure, la.numels).detach()
    log_p = start.log().clone().requires_grad_(True)
    log_s = torch.tensor(math.log(la.sigma), dtype=la.dtype, device=la.device, requires_grad=True)
    opt = torch.optim.Adam([log_p, log_s] if fit_sigma else [log_p], lr=lr)
    hist = []
    best = (-math.inf, log_p.detach().clone(), log_s.detach().clone())
    for _ in range(n_steps):
        opt.zero_grad()
        lml = la.log_marginal_likelihood(log_p.exp(), log_s.exp() if fit_sigma else None)
        val = float(lml.detach())
        if not math.isfinite(val):
            raise LaplaceError("the marginal likelihood became non-finite while tuning; try a smaller lr")
        if val > best[0]:
            best = (val, log_p.detach().clone(), log_s.detach().clone())
        (-lml).backward()
        opt.step()
        hist.append({"log_marglik": val})
    with torch.no_grad():
        final = float(la.log_marginal_likelihood(log_p.exp(), log_s.exp() if fit_sigma else None))
    if final >= best[0]:
        best = (final, log_p.detach().clone(), log_s.detach().clone())
    la.prior_precision = best[1].exp()
    if fit_sigma:
        la.sigma = float(best[2].exp())
    return hist


def _grid_search(la, grid, fit_sigma, score):
    hist = []
    best = None
    for p in grid:
        pt = p.detach().clone()
        if fit_sigma:  # σ² has a closed-form update only at fixed P; search it on a grid too
            val, sig = _best_sigma(la, pt)
        else:
            val, sig = score(pt), la.sigma
        hist.append({"prior_precision": float(pt), "score": val, "sigma": sig})
        if math.isfinite(val) and (best is None or val > best[0]):
            best = (val, pt, sig)
    if best is None:
        raise LaplaceError("every grid point gave a non-finite score")
    la.prior_precision, la.sigma = best[1], float(best[2])
    return hist


def _best_sigma(la, p):
    sigmas = [la.sigma * v for v in torch.logspace(-1.5, 1.5, 31).tolist()]
    vals = [(float(la.log_marginal_likelihood(p, s)), s) for s in sigmas]
    return max(vals)


@torch.no_grad()
def _val_nll(la, p, val_data, centred=False):
    total, n = 0.0, 0
    for X, y in iterate_data(val_data, la.batch_size):
        f, fvar = la.functional_variance(X, prior_precision=p, diagonal=True, centred=centred)
        if la.likelihood == "gaussian":
            var = fvar + la.sigma**2
            yy = y.to(f.device, f.dtype).reshape(f.shape)
            total += float((0.5 * ((yy - f) ** 2 / var + torch.log(2 * math.pi * var))).sum())
        else:
            probs = probit(f, fvar, la.likelihood)
            if la.likelihood == "bernoulli":
                yy = y.to(f.device, f.dtype).reshape(f.shape)
                total += float(-(yy * probs.clamp_min(1e-300).log() + (1 - yy) * (1 - probs).clamp_min(1e-300).log()).sum())
            else:
                total += float(-probs.gather(1, y.to(f.device).long()[:, None]).clamp_min(1e-300).log().sum())
        n += f.shape[0]
    return total / max(n, 1)
