"""The pool-based active-learning loop and its learning-curve metrics.

Each round: train a fresh model on the labelled set (full batch, Adam), record test accuracy, ask
the strategy for ``batch_size`` pool points, reveal their labels, repeat. A curve is accuracy
against number of labels; ``labels_to_target`` reads off where it first reaches a target
(linear interpolation between rounds) and ``aulc`` is its area divided by its width, i.e. the
mean accuracy over the labelling budget.
"""

from __future__ import annotations

import copy
import time
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..choices import as_generator
from ..errors import FisherkitError, ShapeError
from ._checks import as_pool, check_indices, check_outputs, eval_mode
from .batch import BADGE, BAIT
from .strategies import BALD, EGL, Entropy, LeastConfidence, Margin, Random, Strategy

STRATEGIES: dict[str, Callable[[], Strategy]] = {
    "random": Random, "entropy": Entropy, "margin": Margin, "least_confidence": LeastConfidence,
    "bald": BALD, "egl": EGL, "egl_last": lambda: EGL(scope="last_layer"),
    "egl_cluster": lambda: EGL(diversity="cluster"), "egl_t2": lambda: EGL(temperature=2.0),
    "badge": BADGE, "bait": BAIT,
}


def make_strategy(spec, seed: int = 0) -> Strategy:
    """A fresh strategy from a name in ``STRATEGIES`` or a copy of a ``Strategy``, reseeded."""
    if isinstance(spec, str):
        if spec not in STRATEGIES:
            raise FisherkitError(f"unknown strategy {spec!r}; choose from {sorted(STRATEGIES)}")
        s = STRATEGIES[spec]()
    elif isinstance(spec, Strategy):
        s = copy.deepcopy(spec)
    else:
        raise FisherkitError(f"a strategy must be a name or a fisherkit.active Strategy; got {type(spec).__name__}")
    if hasattr(s, "generator"):  # reseeded: every strategy's randomness is its generator
        s.generator, s.seed = as_generator(seed, owner=type(s).__name__)
    return s


def train_classifier(model: nn.Module, X: torch.Tensor, y: torch.Tensor, epochs: int = 100, lr: float = 1e-2,
                     weight_decay: float = 1e-4) -> nn.Module:
    """Full-batch Adam on the mean cross-entropy for ``epochs`` steps (train mode), then eval mode."""
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    for _ in range(epochs):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    with eval_mode(model):
        return float((model(X).argmax(-1) == y).double().mean())


def labels_to_target(n_labels, acc, target: float) -> float:
    """Labels at which the curve first reaches ``target`` (interpolated); ``nan`` if it never does."""
    n, a = np.asarray(n_labels, float), np.asarray(acc, float)
    hit = np.nonzero(a >= target)[0]
    if not len(hit):
        return float("nan")
    i = int(hit[0])
    if i == 0:
        return float(n[0])
    return float(n[i - 1] + (target - a[i - 1]) / (a[i] - a[i - 1]) * (n[i] - n[i - 1]))


def aulc(n_labels, acc) -> float:
    """Area under the learning curve / its width (trapezoid): mean accuracy over the budget."""
    n, a = np.asarray(n_labels, float), np.asarray(acc, float)
    if len(n) < 2:
        return float(a[0])
    return float(((a[1:] + a[:-1]) / 2 * np.diff(n)).sum() / (n[-1] - n[0]))


def _initial(y: torch.Tensor, n_initial: int, seed: int, n_classes: int) -> np.ndarray:
    """A seeded random initial set with at least one example per class where possible."""
    rng = np.random.default_rng(10_000 + seed)
    yn = y.cpu().numpy()
    first = [rng.choice(np.nonzero(yn == c)[0]) for c in range(n_classes) if (yn == c).any()][:n_initial]
    rest = rng.permutation(np.setdiff1d(np.arange(len(yn)), first))[: n_initial - len(first)]
    return np.concatenate([np.asarray(first, dtype=np.int64), rest.astype(np.int64)])


def run(model_fn: Callable[[], nn.Module], X_pool, y_pool, X_test, y_test, strategies=("random", "entropy", "egl"),
        n_initial: int = 20, batch_size: int = 20, rounds: int = 10, seeds=(0,), epochs: int = 100,
        lr: float = 1e-2, weight_decay: float = 1e-4, initial=None, progress: bool = False) -> dict:
    """Pool-based active learning: learning curves of each strategy over seeds.

    ``model_fn()`` builds a fresh model (seeded per seed and round by this loop, on a fork of the global
    RNG: the caller's random stream is left as it was). ``strategies`` are
    names from ``STRATEGIES`` or ``Strategy`` objects (a dict name → strategy keeps your names).
    ``initial``: indices of the first labelled points (else ``n_initial`` random ones, one per class
    first, seeded). Returns ``{"n_labels": [R+1], "strategies": {name: {"acc": [S][R+1],
    "select_seconds": [S]}}, "config": {...}}``.
    """
    X = as_pool(X_pool, None, "pool")
    Xt = as_pool(X_test, None, "test set")
    y, yt = torch.as_tensor(y_pool).long(), torch.as_tensor(y_test).long()
    if y.shape[0] != X.shape[0] or yt.shape[0] != Xt.shape[0]:
        raise FisherkitError(f"features and labels differ in length: pool {X.shape[0]} vs {y.shape[0]}, "
                             f"test {Xt.shape[0]} vs {yt.shape[0]}")
    for name, v in (("batch_size", batch_size), ("rounds", rounds), ("epochs", epochs)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "rounds" else 1):
            raise FisherkitError(f"{name} must be a positive integer; got {v!r}")
    n_classes = int(max(y.max(), yt.max())) + 1
    if initial is not None:
        initial = check_indices(initial, X.shape[0], "initial labelled set")
        if len(initial) == 0:
            raise FisherkitError("the initial labelled set is empty: give at least one labelled point")
        n0 = len(initial)
    else:
        if isinstance(n_initial, bool) or not isinstance(n_initial, int) or n_initial < 1:
            raise FisherkitError(f"n_initial must be a positive integer; got {n_initial!r}")
        n0 = n_initial
    if n0 + rounds * batch_size > X.shape[0]:
        raise FisherkitError(f"{n0} initial + {rounds} rounds × {batch_size} = {n0 + rounds * batch_size} labels "
                             f"exceed the pool of {X.shape[0]} points; lower rounds or batch_size")
    # the loop seeds the global RNG per seed and round (models, training); forked, so the caller's stream
    # is the same after the call as before
    with torch.random.fork_rng(devices=_cuda_devices()):
        probe = model_fn()
        with torch.no_grad(), eval_mode(probe):
            c_out = check_outputs(probe(X[:2].to(_dtype(probe))), "categorical").shape[1]
        if c_out < n_classes:
            raise ShapeError(f"the model gives {c_out} logits but the labels have {n_classes} classes")
        specs = strategies.items() if isinstance(strategies, dict) else [
            (s if isinstance(s, str) else getattr(s, "name", type(s).__name__), s) for s in strategies]
        seeds = list(seeds)
        out = {"n_labels": [n0 + r * batch_size for r in range(rounds + 1)], "strategies": {},
               "config": {"n_initial": n0, "batch_size": batch_size, "rounds": rounds, "seeds": seeds, "epochs": epochs,
                          "lr": lr, "weight_decay": weight_decay, "pool": int(X.shape[0]), "test": int(Xt.shape[0])}}
        total = len(specs) * len(seeds) * (rounds + 1)
        bar = _Bar(total, progress)
        for name, spec in specs:
            accs, secs = [], []
            for seed in seeds:
                strat = make_strategy(spec, seed)
                labelled = initial.copy() if initial is not None else _initial(y, n0, seed, n_classes)
                curve, t_sel = [], 0.0
                for r in range(rounds + 1):
                    torch.manual_seed(1_000 * seed + r)
                    model = model_fn()
                    Xl = X[labelled]
                    train_classifier(model, Xl.to(_dtype(model)), y[labelled], epochs, lr, weight_decay)
                    curve.append(accuracy(model, Xt.to(_dtype(model)), yt))
                    bar.advance(f"{name} seed {seed}")
                    if r == rounds:
                        break
                    mask = np.ones(X.shape[0], bool)
                    mask[labelled] = False
                    pool_idx = np.nonzero(mask)[0]
                    t0 = time.perf_counter()
                    pick = strat.select(model, X[pool_idx], batch_size, X_labeled=Xl)
                    t_sel += time.perf_counter() - t0
                    labelled = np.concatenate([labelled, pool_idx[pick.cpu().numpy()]])
                    check_indices(labelled, X.shape[0])
                accs.append(curve)
                secs.append(t_sel)
            out["strategies"][name] = {"acc": accs, "select_seconds": secs}
        bar.close()
    return out


def _cuda_devices() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def _dtype(model):
    for p in model.parameters():
        return p.dtype
    return torch.float32


class _Bar:
    def __init__(self, total, enabled):
        self.enabled = enabled
        if enabled:
            from rich.progress import Progress

            self.p = Progress(transient=True)
            self.p.start()
            self.task = self.p.add_task("active learning", total=total)

    def advance(self, desc):
        if self.enabled:
            self.p.update(self.task, advance=1, description=desc)

    def close(self):
        if self.enabled:
            self.p.stop()


def summarize(results: dict, target: float) -> dict:
    """Per strategy: labels to ``target`` and AULC as mean ± std over seeds (plus the seed values)."""
    n = results["n_labels"]
    rows = {}
    for name, r in results["strategies"].items():
        acc = np.asarray(r["acc"], float)
        ltt = np.array([labels_to_target(n, a, target) for a in acc])
        au = np.array([aulc(n, a) for a in acc])
        rows[name] = {
            "labels_to_target_mean_curve": labels_to_target(n, acc.mean(0), target),
            "labels_to_target": ltt.tolist(), "reached": int(np.isfinite(ltt).sum()),
            "ltt_mean": float(np.nanmean(ltt)) if np.isfinite(ltt).any() else float("nan"),
            "ltt_std": float(np.nanstd(ltt)) if np.isfinite(ltt).any() else float("nan"),
            "aulc": au.tolist(), "aulc_mean": float(au.mean()), "aulc_std": float(au.std(ddof=1)) if len(au) > 1 else 0.0,
            "final_acc_mean": float(acc[:, -1].mean()), "select_seconds_mean": float(np.mean(r["select_seconds"])),
        }
    return rows
