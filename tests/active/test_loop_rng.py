"""``fisherkit.active.loop.run`` seeds the global RNG per seed and round for its models and training — on a
fork, so the caller's random stream is the same after the call, and the curves are the same either way."""

from __future__ import annotations

import torch
from torch import nn

from fisherkit.active.loop import run


def test_run_leaves_the_callers_rng_and_is_reproducible():
    g = torch.Generator().manual_seed(0)
    X, Xt = torch.randn(60, 4, generator=g), torch.randn(30, 4, generator=g)
    w = torch.randn(4, 3, generator=g)
    y, yt = (X @ w).argmax(1), (Xt @ w).argmax(1)
    kw = dict(strategies=("random", "entropy"), n_initial=6, batch_size=5, rounds=2, seeds=(0,), epochs=5)

    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = run(lambda: nn.Linear(4, 3), X, y, Xt, yt, **kw)
    assert torch.equal(torch.rand(3), expected_next)  # the caller's stream did not move
    torch.manual_seed(999)
    b = run(lambda: nn.Linear(4, 3), X, y, Xt, yt, **kw)
    assert all(a["strategies"][k]["acc"] == b["strategies"][k]["acc"] for k in a["strategies"])
