"""``fisherkit.studies.training.train_classifier``'s ``on_epoch`` hook: called after every epoch with the
model and its optimizer, the model's training mode put back after it, and the run bit-identical to the
hand-written loop it replaces (benchmarks/bench_laplace.py's validation-tracking and online-marglik runs)."""

from __future__ import annotations

import torch
from torch import nn

from fisherkit.studies.training import train_classifier


def _model():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 3))


def test_on_epoch_equals_the_hand_written_loop():
    g0 = torch.Generator().manual_seed(0)
    X, y = torch.randn(200, 8, generator=g0), torch.randint(0, 3, (200,), generator=g0)
    Xv, yv = torch.randn(50, 8, generator=g0), torch.randint(0, 3, (50,), generator=g0)

    def after(m, opt, ep, seen):  # validate in eval mode; change the weight decay after epoch 2
        m.eval()
        with torch.no_grad():
            seen.append(float(nn.functional.cross_entropy(m(Xv), yv)))
        if ep == 2:
            for group in opt.param_groups:
                group["weight_decay"] = 1e-2

    m, ref = _model(), []
    opt = torch.optim.Adam(m.parameters(), lr=1e-3, weight_decay=5e-4)
    g = torch.Generator().manual_seed(7)
    torch.manual_seed(5)  # dropout draws from the global RNG in both runs
    for ep in range(6):
        m.train()
        p = torch.randperm(200, generator=g)
        for s in range(0, 200, 64):
            idx = p[s : s + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(m(X[idx]), y[idx]).backward()
            opt.step()
        after(m, opt, ep, ref)

    m2, got, epochs = _model().train(), [], []
    torch.manual_seed(5)
    train_classifier(m2, X, y, 6, lr=1e-3, batch=64, seed=7, weight_decay=5e-4,
                     on_epoch=lambda mm, o, ep: (epochs.append(ep), after(mm, o, ep, got)))
    assert epochs == list(range(6)) and got == ref
    assert m2.training  # put back after each eval-mode callback
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))
