"""Diagnostics of natural-gradient training, and the "Adam approximates a diagonal Fisher" check.

* ``cos_angle(g, n)``: cosine between the gradient and the natural gradient, gᵀn / (‖g‖‖n‖)
  (> 0 always for a PSD F̂ + λI: the natural gradient is a descent direction).
* Per-step KL moved: ``NaturalGradient(..., diagnostics=True).history`` records ½ΔᵀF̂Δ (the KL
  the quadratic model predicts) and KL[p_θ ‖ p_θ+Δ] on the batch (``fk.kl_divergence``).
* ``adam_fisher_correlation``: Adam's second-moment estimate v (an EMA of squared *mini-batch*
  gradients) against the diagonal of the empirical Fisher (mean of squared *per-sample* gradients
  at the observed labels) and of the true Fisher (labels from the model), on the same model.
  Kunstner et al. (2019) argue the resemblance is loose: E[ḡ²] = (E g)² + Var(g)/B, so v tracks
  the squared mean gradient plus 1/B of the gradient variance, not F. We report what we measure.
"""

from __future__ import annotations

import torch


def cos_angle(g: torch.Tensor, n: torch.Tensor) -> float:
    """gᵀn / (‖g‖ ‖n‖) for flat vectors."""
    return float(g @ n / (g.norm() * n.norm()).clamp_min(1e-300))


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 0..n−1 (ties broken by position; fine for continuous values)."""
    r = torch.empty_like(x)
    r[x.argsort()] = torch.arange(x.numel(), dtype=x.dtype)
    return r


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a @ b) / (a.norm() * b.norm()).clamp_min(1e-300))


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of the ranks."""
    return pearson(_ranks(a.double()), _ranks(b.double()))


def adam_fisher_correlation(model, adam: torch.optim.Adam, data, likelihood="categorical") -> dict:
    """Correlations (over parameters) of Adam's v = exp_avg_sq with Fisher diagonals of ``data``.

    Returns Pearson (raw and of logs) and Spearman correlations of v against the empirical Fisher
    diagonal, the true (exact) Fisher diagonal, and the squared full-data gradient (E g)², and the
    median of v / reference (the scale: ≈ 1/B if v tracked the per-sample second moment); plus the
    correlation between the two Fisher diagonals and their relative difference ‖F_emp − F‖/‖F‖.
    """
    from ..api import fisher
    from ..likelihoods import get_likelihood

    params = [p for p in model.parameters() if p.requires_grad]
    missing = [i for i, p in enumerate(params) if "exp_avg_sq" not in adam.state.get(p, {})]
    if missing:
        raise ValueError("the Adam optimizer has no second-moment estimate yet; take some steps first")
    v = torch.cat([adam.state[p]["exp_avg_sq"].reshape(-1) for p in params]).detach()
    emp = fisher(model, data, likelihood=likelihood, kind="empirical", structure="diag").diag()
    true = fisher(model, data, likelihood=likelihood, kind="exact", structure="diag").diag()
    lik = get_likelihood(likelihood)
    X, T = data
    model.zero_grad()
    lik.nll(model(X), T).mean().backward()
    g2 = torch.cat([p.grad.reshape(-1) ** 2 for p in params]).detach()
    model.zero_grad()
    eps = 1e-30
    out = {"n_params": int(v.numel())}
    for name, ref in (("empirical_fisher", emp), ("true_fisher", true), ("squared_mean_gradient", g2)):
        out[name] = {"pearson": pearson(v, ref), "pearson_log": pearson((v + eps).log(), (ref + eps).log()),
                     "spearman": spearman(v, ref),
                     "median_ratio": float((v / ref.clamp_min(1e-30)).median())}
    out["empirical_vs_true"] = {"pearson": pearson(emp, true), "spearman": spearman(emp, true),
                                "relative_difference": float((emp - true).norm() / true.norm())}
    return out
