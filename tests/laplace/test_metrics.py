"""Metrics against scikit-learn (AUROC, log loss) and hand-computed values (ECE, Brier, bins)."""

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

from fisherkit.laplace import LaplaceError, metrics


def _probs(n=200, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(2 * torch.randn(n, c, generator=g, dtype=torch.float64), 1)
    y = torch.randint(0, c, (n,), generator=g)
    return p, y


def test_nll_accuracy_brier():
    p, y = _probs()
    assert metrics.nll(p, y) == pytest.approx(log_loss(y.numpy(), p.numpy(), labels=range(4)), rel=1e-12)
    assert metrics.accuracy(p, y) == pytest.approx(float((p.argmax(1) == y).double().mean()))
    onehot = np.eye(4)[y.numpy()]
    assert metrics.brier(p, y) == pytest.approx(float(((p.numpy() - onehot) ** 2).sum(1).mean()), rel=1e-12)


def test_ece_by_hand():
    # 4 points, 2 bins: confidences .6 (right), .7 (wrong) -> bin (.5, 1]; .3/.4 below .5 -> bin [0, .5]
    p = torch.tensor([[0.6, 0.4], [0.3, 0.7], [0.45, 0.55], [0.5, 0.5]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1])
    # confidences .6, .7, .55, .5 ; the last is in bin [0, .5] (edge goes to the lower bin)
    # bin 1 (.5, 1]: conf mean (.6+.7+.55)/3, acc (1+0+1)/3 ; bin 0: conf .5, acc 0 (argmax of a tie is class 0)
    r = metrics.reliability(p, y, n_bins=2)
    assert r["counts"] == [1.0, 3.0]
    ref = 3 / 4 * abs(2 / 3 - (0.6 + 0.7 + 0.55) / 3) + 1 / 4 * abs(0.0 - 0.5)
    assert metrics.ece(p, y, n_bins=2) == pytest.approx(ref, rel=1e-12)


def test_auroc_matches_sklearn_with_ties():
    g = torch.Generator().manual_seed(1)
    a = torch.randint(0, 5, (50,), generator=g).double()
    b = torch.randint(2, 8, (40,), generator=g).double()
    ref = roc_auc_score(np.r_[np.zeros(50), np.ones(40)], np.r_[a.numpy(), b.numpy()])
    assert metrics.auroc(a, b) == pytest.approx(ref, rel=1e-12)
    p_in, _ = _probs(seed=2)
    p_out = torch.full((30, 4), 0.25, dtype=torch.float64)  # maximal entropy
    assert metrics.ood_auroc(p_in, p_out) == pytest.approx(1.0)


def test_bad_metric_input():
    p, y = _probs()
    with pytest.raises(LaplaceError, match="labels"):
        metrics.nll(p, y[:-1])
    with pytest.raises(LaplaceError, match="range|lie in"):
        metrics.accuracy(p, y + 10)
    with pytest.raises(LaplaceError, match="n_bins"):
        metrics.ece(p, y, n_bins=0)
