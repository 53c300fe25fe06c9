"""Natural gradient reduces the loss faster than plain SGD at an equal number of steps (seeded)."""

import torch
import torch.nn.functional as tF

import fisherkit as fk
from fisherkit.optim import NaturalGradient


def train(make_opt, steps=60, seed=0):
    split = fk.datasets.load("digits", seed=0, dtype=torch.float64)
    X, y = split.X_train[:512], split.y_train[:512]
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10)).double()
    opt = make_opt(model)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, X.shape[0], (64,), generator=g)
        opt.zero_grad()
        tF.cross_entropy(model(X[idx]), y[idx]).backward()
        opt.step()
    with torch.no_grad():
        return float(tF.cross_entropy(model(X), y))


def test_natural_gradient_beats_best_plain_sgd_at_equal_steps():
    """SGD gets the best of a learning-rate grid (measured: lr=3 → 0.0143 after 60 steps); KFAC with
    lr=0.3 reached 0.0105 (float64, deterministic on CPU)."""
    sgd = min(train(lambda m, lr=lr: torch.optim.SGD(m.parameters(), lr=lr)) for lr in (1.0, 3.0, 10.0))
    ngd = train(lambda m: NaturalGradient(m, lr=0.3, structure="kfac", damping=1e-2, update_every=5))
    assert ngd < 0.85 * sgd, (ngd, sgd)
