"""Models, data, timing and memory helpers shared by the Fisher benchmark.

Every number the benchmark reports is a *ratio* to a plain forward + backward epoch timed in the
same process, because the machines we run on are shared and absolute times drift by ±25 %.
"""

from __future__ import annotations

import gc
import os
import resource
import statistics
import time

import torch
from torch import nn

BATCH = 128
CLASSES = 10


class TransformerClassifier(nn.Module):
    """M4: token embedding + learned positions → 2-layer TransformerEncoder (d=128, 4 heads) → mean → Linear."""

    def __init__(self, vocab: int = 100, length: int = 32, d: int = 128, heads: int = 4, layers: int = 2,
                 classes: int = CLASSES):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(length, d))
        layer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=2 * d, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, tokens):
        h = self.emb(tokens) + self.pos[: tokens.shape[1]]
        return self.head(self.encoder(h).mean(1))


def _digits(n: int | None):
    from fisherkit.datasets import load

    s = load("digits", test_size=0.25, seed=0, standardize=True)
    X = torch.cat([s.X_train, s.X_test]).float()
    y = torch.cat([s.y_train, s.y_test]).long()
    return (X[:n], y[:n]) if n else (X, y)


def build(name: str, n: int | None = None, seed: int = 0):
    """(model, X, y) for M1–M4 (float32, eval mode). ``n`` overrides the number of samples (quick runs)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    if name == "M1":
        model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, CLASSES))
        X, y = _digits(n)
    elif name == "M2":
        n = n or 4096
        model = nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, CLASSES))
        X = torch.randn(n, 784, generator=g)
        y = torch.randint(0, CLASSES, (n,), generator=g)
    elif name == "M3":
        n = n or 2048
        model = nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 3), nn.ReLU(), nn.Flatten(),
                              nn.Linear(32 * 24 * 24, CLASSES))
        X = torch.randn(n, 1, 28, 28, generator=g)
        y = torch.randint(0, CLASSES, (n,), generator=g)
    elif name == "M4":
        n = n or 1024
        model = TransformerClassifier()
        X = torch.randint(0, 100, (n, 32), generator=g)
        y = torch.randint(0, CLASSES, (n,), generator=g)
    else:
        raise ValueError(f"unknown model {name!r}; use M1, M2, M3 or M4")
    return model.float().eval(), X, y


def big_mlp(seed: int = 0) -> nn.Module:
    """The ~10M-parameter MLP of the streaming check: 784-3000-2500-10 (9.9M parameters)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(784, 3000), nn.ReLU(), nn.Linear(3000, 2500), nn.ReLU(), nn.Linear(2500, CLASSES))


def batches(X, y, bs: int = BATCH):
    return [(X[s : s + bs], y[s : s + bs]) for s in range(0, X.shape[0], bs)]


def plain_epoch(model, data):
    """The cost floor: one forward + backward (mean cross-entropy) per batch, gradients discarded."""
    loss_fn = nn.CrossEntropyLoss()
    for x, y in data:
        model.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
    model.zero_grad(set_to_none=True)


def median_time(fn, repeats: int = 3, warmup: int = 1, slow: float = 5.0) -> tuple[float, object]:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` untimed runs; also its last result.

    A method whose warm-up took longer than ``slow`` seconds is not run again: that run is its time.
    """
    out = None
    for _ in range(warmup):
        t0 = time.perf_counter()
        out = fn()
        took = time.perf_counter() - t0
        if took > slow:  # start-up effects are negligible next to this: the warm-up run is the measurement
            return took, out
    times = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def paired_time(fn, epoch_fn, repeats: int = 3, slow: float = 5.0) -> tuple[float, float, object]:
    """(median time of ``fn``, median ratio to an epoch timed right before each run, last result).

    One untimed warm-up of ``fn`` first; if it took longer than ``slow`` seconds it is the measurement.
    Pairing each run with its own epoch keeps the ratio honest when the machine's load drifts.
    """
    t0 = time.perf_counter()
    out = fn()
    took = time.perf_counter() - t0
    if took > slow:
        te, _ = median_time(epoch_fn, 1, 0)
        return took, took / te, out
    times, ratios = [], []
    for _ in range(repeats):
        gc.collect()
        te, _ = median_time(epoch_fn, 1, 0)
        t, out = median_time(fn, 1, 0)
        times.append(t)
        ratios.append(t / te)
    return statistics.median(times), statistics.median(ratios), out


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """High-water mark of the resident set size of this process (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64."""
    a, b = a.double().reshape(-1), b.double().reshape(-1)
    return float((a - b).norm() / b.norm().clamp_min(1e-300))
