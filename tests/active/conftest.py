import pytest
import torch
from torch import nn


@pytest.fixture
def small():
    """A float64 MLP trained briefly on 3-class Gaussian data, a pool, and a labelled set."""
    from fisherkit.datasets import gaussian_classification
    from fisherkit.active import train_classifier

    torch.manual_seed(0)
    X, y = gaussian_classification(80, 4, 3, seed=1, dtype=torch.float64)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    train_classifier(model, X[:20], y[:20], epochs=30)
    return model, X[20:], X[:20], y
