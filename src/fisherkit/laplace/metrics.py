"""Calibration and uncertainty metrics for predicted class probabilities.

All take ``probs`` [N, C] (rows sum to 1) and integer ``labels`` [N], and return Python floats.

* accuracy: mean 1[argmax p = y].
* nll: −(1/N) Σ log p_y (probabilities clamped at 1e-12).
* brier: (1/N) Σₙ Σ_c (p_c − 1[y = c])² (the multi-class Brier score, in [0, 2]).
* ece: expected calibration error with ``n_bins`` equal-width bins of the confidence max_c p_c on
  [0, 1] (bin b holds confidences in (b/B, (b+1)/B], the first bin also 0):
  Σ_b (n_b / N) |acc_b − conf_b|.
* ood_auroc: area under the ROC curve for telling out-of-distribution inputs (positives) from
  in-distribution ones (negatives) by a score (default: predictive entropy); ties count ½
  (the Mann–Whitney U statistic / (n_in · n_out)).
"""

from __future__ import annotations

import torch

from .errors import LaplaceError


def _check(probs, labels=None):
    if not isinstance(probs, torch.Tensor) or probs.dim() != 2 or probs.shape[0] == 0:
        raise LaplaceError(f"probs must be a non-empty [N, C] tensor; got {getattr(probs, 'shape', type(probs).__name__)}")
    if labels is not None:
        if not isinstance(labels, torch.Tensor) or labels.shape != (probs.shape[0],):
            raise LaplaceError(f"labels must be a [N] tensor with N = {probs.shape[0]}; got {getattr(labels, 'shape', None)}")
        if bool((labels < 0).any()) or bool((labels >= probs.shape[1]).any()):
            raise LaplaceError(f"labels must lie in [0, {probs.shape[1]})")
    return probs.detach().double(), None if labels is None else labels.long().to(probs.device)


def binary_to_two_class(p1: torch.Tensor) -> torch.Tensor:
    """p(y = 1) [N] or [N, 1] → [N, 2] probabilities (for Bernoulli models)."""
    p1 = p1.reshape(-1)
    return torch.stack([1 - p1, p1], 1)


def accuracy(probs, labels) -> float:
    p, y = _check(probs, labels)
    return float((p.argmax(1) == y).double().mean())


def nll(probs, labels) -> float:
    p, y = _check(probs, labels)
    return float(-p.gather(1, y[:, None]).clamp_min(1e-12).log().mean())


def brier(probs, labels) -> float:
    p, y = _check(probs, labels)
    onehot = torch.nn.functional.one_hot(y, p.shape[1]).double()
    return float(((p - onehot) ** 2).sum(1).mean())


def reliability(probs, labels, n_bins: int = 15) -> dict:
    """Per-bin counts, mean confidence and accuracy of the confidence max_c p_c (equal-width bins)."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise LaplaceError(f"n_bins must be a positive integer; got {n_bins!r}")
    p, y = _check(probs, labels)
    conf, pred = p.max(1)
    correct = (pred == y).double()
    b = torch.clamp(torch.ceil(conf * n_bins).long() - 1, 0, n_bins - 1)
    counts = torch.bincount(b, minlength=n_bins).double()
    conf_sum = torch.bincount(b, weights=conf, minlength=n_bins)
    acc_sum = torch.bincount(b, weights=correct, minlength=n_bins)
    safe = counts.clamp_min(1)
    return {"edges": torch.linspace(0, 1, n_bins + 1).tolist(), "counts": counts.tolist(),
            "confidence": (conf_sum / safe).tolist(), "accuracy": (acc_sum / safe).tolist()}


def ece(probs, labels, n_bins: int = 15) -> float:
    r = reliability(probs, labels, n_bins)
    n = sum(r["counts"])
    return float(sum(c / n * abs(a - f) for c, a, f in zip(r["counts"], r["accuracy"], r["confidence"])))


def entropy(probs) -> torch.Tensor:
    """Predictive entropy −Σ_c p_c log p_c per row, [N]."""
    p, _ = _check(probs)
    return -(p * p.clamp_min(1e-300).log()).sum(1)


def auroc(scores_neg: torch.Tensor, scores_pos: torch.Tensor) -> float:
    """P(score_pos > score_neg) + ½ P(equal): the area under the ROC curve."""
    a = torch.as_tensor(scores_neg).double().reshape(-1)
    b = torch.as_tensor(scores_pos).double().reshape(-1)
    if a.numel() == 0 or b.numel() == 0:
        raise LaplaceError("auroc needs at least one score on each side")
    allv = torch.cat([a, b])
    order = torch.argsort(allv)
    ranks = torch.empty_like(allv)
    ranks[order] = torch.arange(1, allv.numel() + 1, dtype=torch.float64)
    # average ranks over ties
    uniq, inv = torch.unique(allv, return_inverse=True)
    mean_rank = torch.zeros_like(uniq).scatter_add_(0, inv, ranks) / torch.bincount(inv).double()
    r = mean_rank[inv]
    u = r[a.numel():].sum() - b.numel() * (b.numel() + 1) / 2
    return float(u / (a.numel() * b.numel()))


def ood_auroc(probs_in, probs_out) -> float:
    """AUROC of predictive entropy for in-distribution (negatives) vs OOD (positives) inputs."""
    return auroc(entropy(probs_in), entropy(probs_out))


def summary(probs, labels, n_bins: int = 15) -> dict:
    """accuracy, nll, brier and ece in one dict."""
    return {"accuracy": accuracy(probs, labels), "nll": nll(probs, labels), "brier": brier(probs, labels),
            "ece": ece(probs, labels, n_bins)}


def plot_reliability(ax, probs, labels, n_bins: int = 15, label: str | None = None, **style):
    """Draw a reliability diagram (accuracy vs confidence per bin, with the diagonal) on ``ax``."""
    r = reliability(probs, labels, n_bins)
    xs = [c for c, k in zip(r["confidence"], r["counts"]) if k > 0]
    ys = [a for a, k in zip(r["accuracy"], r["counts"]) if k > 0]
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--")
    ax.plot(xs, ys, marker="o", label=label, **style)
    ax.set_xlabel("confidence (max probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    return ax
