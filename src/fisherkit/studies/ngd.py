"""The natural-gradient experiment: NaturalGradient (kfac, ekfac, diag, implicit) vs SGD+momentum and Adam.

Two problems on the bundled digits data (1,347 training images of 8 × 8 pixels):

* ``classifier``: MLP 64-64-10 (tanh), categorical likelihood (cross-entropy);
* ``autoencoder``: 64-32-8-32-64 (tanh), Bernoulli likelihood on binarised pixels (x/16 > ½).

Each method gets its learning rate from a small grid (chosen on seed 0 by the final training loss),
then runs over the remaining seeds at that rate. Training loss (mean nll over the whole training
set, evaluated after every epoch, not timed) is recorded against epochs and against training
wall-clock. The target loss of a problem is the larger of SGD's and Adam's final (median) losses,
so both baselines reach it; for every method we report the epochs and seconds to reach it.

``run_comparison(quick=True)`` is the < 1 minute version (1 seed, one learning rate each, 3 epochs).
"""

from __future__ import annotations

import functools
import math
import statistics
import time

import torch
from torch import nn

from ..optim.natural_gradient import NaturalGradient

METHODS = ("kfac", "ekfac", "diag", "implicit", "sgd", "adam")
# learning-rate grids (5 values; the 4-value ones left Adam, SGD and KFAC at their edges)
GRIDS = {
    "kfac": (0.03, 0.1, 0.3, 1.0, 3.0),
    "ekfac": (0.03, 0.1, 0.3, 1.0, 3.0),
    "diag": (0.01, 0.03, 0.1, 0.3, 1.0),
    "implicit": (0.1, 0.3, 1.0, 3.0),
    "sgd": (0.01, 0.03, 0.1, 0.3, 1.0),
    "adam": (1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
}
# the single learning rate each method gets in --quick mode
QUICK_LR = {"kfac": 0.3, "ekfac": 0.3, "diag": 0.1, "implicit": 1.0, "sgd": 0.1, "adam": 1e-2}
# fixed settings of the natural-gradient variants (Tikhonov λ; KFAC's is split by π-damping)
NGD = {
    "kfac": dict(damping=1e-2, kind="mc"),
    "ekfac": dict(damping=1e-1, kind="mc"),
    "diag": dict(damping=1e-1, kind="mc"),
    "implicit": dict(damping=1e-1, kind="exact", cg_iters=10),
}
COMMON = dict(update_every=5, ema=0.95, kl_clip=1e-2, momentum=0.0)


@functools.lru_cache(maxsize=2)
def _digits(dtype):
    from .. import datasets

    return datasets.load("digits", seed=0, standardize="unit", dtype=dtype)


def load_problem(name: str, dtype=torch.float32):
    """(X, target, likelihood name, model builder) of ``classifier`` or ``autoencoder``."""
    split = _digits(dtype)
    X = split.X_train
    if name == "classifier":
        def build():
            return nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10)).to(dtype)

        return X, split.y_train, "categorical", build
    if name == "autoencoder":
        Xb = (X > 0.5).to(dtype)

        def build():
            return nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 8), nn.Tanh(), nn.Linear(8, 32),
                                 nn.Tanh(), nn.Linear(32, 64)).to(dtype)

        return Xb, Xb, "bernoulli", build
    raise ValueError(f"unknown problem {name!r}; use 'classifier' or 'autoencoder'")


def make_optimizer(method: str, model: nn.Module, lr: float, likelihood: str, seed: int = 0, diagnostics=False):
    if method == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    if method == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    return NaturalGradient(model, lr=lr, structure=method, likelihood=likelihood, seed=seed,
                           diagnostics=diagnostics, **COMMON, **NGD[method])


def _loss_fn(likelihood):
    from ..likelihoods import get_likelihood

    lik = get_likelihood(likelihood)
    return lambda out, target: lik.nll(out, target).mean()


def train_run(problem: str, method: str, lr: float, seed: int, epochs: int, batch_size: int = 64,
              diagnostics: bool = False) -> dict:
    """Train one (problem, method, lr, seed); returns per-epoch losses and cumulative seconds."""
    X, T, likelihood, build = load_problem(problem)
    torch.manual_seed(seed)
    model = build()
    opt = make_optimizer(method, model, lr, likelihood, seed=seed, diagnostics=diagnostics)
    loss_fn = _loss_fn(likelihood)
    g = torch.Generator().manual_seed(1000 + seed)

    def full_loss():
        with torch.no_grad():
            return float(loss_fn(model(X), T))

    losses, seconds, elapsed = [full_loss()], [0.0], 0.0
    for _ in range(epochs):
        perm = torch.randperm(X.shape[0], generator=g)
        t0 = time.perf_counter()
        for s in range(0, X.shape[0], batch_size):
            idx = perm[s:s + batch_size]
            opt.zero_grad()
            loss_fn(model(X[idx]), T[idx]).backward()
            opt.step()
        elapsed += time.perf_counter() - t0
        losses.append(full_loss())
        seconds.append(elapsed)
        if not math.isfinite(losses[-1]):
            break
    out = {"problem": problem, "method": method, "lr": lr, "seed": seed, "loss": losses, "seconds": seconds}
    if diagnostics and isinstance(opt, NaturalGradient) and opt.history:
        h = opt.history
        out["diagnostics"] = {
            "cos_angle_mean": statistics.fmean(e["cos_angle"] for e in h),
            "kl_model_mean": statistics.fmean(e["kl_model"] for e in h),
            "kl_measured_mean": statistics.fmean(e["kl_measured"] for e in h if "kl_measured" in e),
            "kl_measured_max": max(e["kl_measured"] for e in h if "kl_measured" in e),
        }
    if method == "adam":
        out["_model"], out["_opt"] = model, opt
    return out


def _final(run):
    v = run["loss"][-1]
    return v if math.isfinite(v) else float("inf")


def first_reach(values, times, target):
    """(epoch, seconds) at which the loss curve first reaches ``target``; (None, None) if never.

    Between two evaluations the crossing is interpolated linearly in log-loss (fractional epochs).
    """
    for e, (v, t) in enumerate(zip(values, times)):
        if math.isfinite(v) and v <= target:
            if e == 0:
                return 0.0, 0.0
            prev = values[e - 1]
            if not (math.isfinite(prev) and prev > 0 and v > 0):
                return float(e), t
            frac = (math.log(prev) - math.log(target)) / max(math.log(prev) - math.log(v), 1e-300)
            frac = min(max(frac, 0.0), 1.0)
            return e - 1 + frac, times[e - 1] + frac * (t - times[e - 1])
    return None, None


def _median_curve(runs, key):
    n = min(len(r[key]) for r in runs)
    return [statistics.median(r[key][i] for r in runs) for i in range(n)]


def summarise(problem_runs: dict) -> dict:
    """Median curves, the target (max of SGD's and Adam's final median loss), and time to reach it."""
    med = {m: {"loss": _median_curve(rs, "loss"), "seconds": _median_curve(rs, "seconds")}
           for m, rs in problem_runs.items()}
    finals = {m: med[m]["loss"][-1] for m in med}
    base = [finals[m] for m in ("sgd", "adam") if m in finals and math.isfinite(finals[m])]
    target = max(base) if base else min(v for v in finals.values() if math.isfinite(v))
    rows = {}
    for m in med:
        ep, sec = first_reach(med[m]["loss"], med[m]["seconds"], target)
        rows[m] = {"final_loss": finals[m], "epochs_to_target": ep, "seconds_to_target": sec,
                   "seconds_per_epoch": med[m]["seconds"][-1] / max(1, len(med[m]["seconds"]) - 1)}
    for m, row in rows.items():
        for b in ("adam", "sgd"):
            for key in ("epochs_to_target", "seconds_to_target"):
                mine, theirs = row[key], rows.get(b, {}).get(key)
                row[f"{key}_vs_{b}"] = (mine / theirs) if (mine is not None and theirs) else None
    return {"target": target, "median": med, "table": rows}


def adam_fisher_correlation(model, opt, X, T, likelihood) -> dict:
    """Correlation of Adam's second moment v with the empirical and the true Fisher diagonal."""
    from .ngd_diagnostics import adam_fisher_correlation as corr

    return corr(model, opt, (X, T), likelihood)


def run_comparison(quick: bool = True, seed: int = 0, seeds: int | None = None, epochs: int | None = None,
                   problems=("classifier", "autoencoder"), methods=METHODS, progress: bool = False) -> dict:
    """Run the comparison; returns a JSON-able dict (``plot_curves`` / ``format_table`` render it).

    quick: 1 seed, one learning rate per method (``QUICK_LR``), 3 epochs (< 1 minute on 2 cores).
    Otherwise: the full grid on ``seed`` picks each method's lr, then ``seeds`` seeds (default 3)
    run at that lr for ``epochs`` epochs (default 15).
    """
    torch.set_num_threads(1)
    epochs = epochs or (3 if quick else 15)
    n_seeds = 1 if quick else (seeds or 3)
    seed_list = [seed + i for i in range(n_seeds)]
    jobs = sum((1 if quick else len(GRIDS[m])) + n_seeds - 1 for m in methods) * len(problems)
    bar = _Bar(progress, jobs)
    result = {"quick": quick, "epochs": epochs, "seeds": seed_list, "grids": {m: GRIDS[m] for m in methods},
              "ngd_settings": {m: {**COMMON, **NGD[m]} for m in methods if m in NGD}, "problems": {}}
    t_start = time.perf_counter()
    for prob in problems:
        X, T, likelihood, _ = load_problem(prob)
        runs, chosen, grid_losses, adam_corr, diags = {}, {}, {}, None, {}
        for m in methods:
            grid = (QUICK_LR[m],) if quick else GRIDS[m]
            trials = []
            for lr in grid:
                trials.append(train_run(prob, m, lr, seed_list[0], epochs))
                bar.advance(f"{prob} {m} lr={lr:g}")
            grid_losses[m] = {str(t["lr"]): _final(t) for t in trials}
            best = min(trials, key=_final)
            chosen[m] = best["lr"]
            rs = [best] + [train_run(prob, m, best["lr"], s, epochs) for s in seed_list[1:]]
            bar.advance(f"{prob} {m} seeds", len(seed_list) - 1)
            if m == "adam":
                adam_corr = adam_fisher_correlation(best["_model"], best["_opt"], X, T, likelihood)
            if m in NGD:  # a separate, untimed run with per-step diagnostics at the chosen lr
                diags[m] = train_run(prob, m, best["lr"], seed_list[0], 1 if quick else min(epochs, 3),
                                     diagnostics=True)["diagnostics"]
            runs[m] = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rs]
        result["problems"][prob] = {"likelihood": likelihood, "chosen_lr": chosen, "grid_final_loss": grid_losses,
                                    "runs": runs, "summary": summarise(runs), "adam_fisher_correlation": adam_corr,
                                    "ngd_diagnostics": diags}
    bar.close()
    result["total_seconds"] = time.perf_counter() - t_start
    return result


class _Bar:
    """A rich progress bar over training runs, or nothing."""

    def __init__(self, enabled, total):
        self.progress = None
        if enabled:
            from rich.progress import Progress

            self.progress = Progress(transient=True)
            self.progress.start()
            self.task = self.progress.add_task("ngd experiment", total=total)

    def advance(self, what, n=1):
        if self.progress is not None:
            self.progress.update(self.task, advance=n, description=what)

    def close(self):
        if self.progress is not None:
            self.progress.stop()
from .ngd_plots import format_diagnostics, format_table, plot_curves  # noqa: E402,F401  (re-exported for the report)
