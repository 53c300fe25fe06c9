"""The calibration study of docs/laplace.md, the ``fisherkit laplace`` command and the demo report.

Digits (8×8, offline), an MLP and a small CNN trained to a MAP estimate with weight decay; then,
without retraining: last-layer Laplace (diag, KFAC) and all-layer KFAC Laplace, prior precision by
marginal likelihood, linearised predictive with the centred probit approximation (``link``; the
plain probit of laplace-torch with ``link="probit"``). Baseline: a deep ensemble of 5 (the MAP
model plus 4 more seeds). Splits: the clean test set; the test digits rotated by 15°…60° (dataset
shift, ``RotatedDigits``); OOD AUROC of predictive entropy: clean test vs uniform-noise images, and
a held-out class (every method refitted on the nine other digits: seed s holds out digit s mod 10;
the in-distribution test digits vs the held-out digit's). Metrics: accuracy, NLL, Brier, ECE (15
equal-width confidence bins).

(An experiment driver: it belongs with the other studies; it lives here until it moves there.)
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from .training import train_classifier
from ..laplace import metrics
from ..laplace.laplace import Laplace

METHODS = ("map", "ll_diag", "ll_kfac", "kfac", "ensemble")
LINKS = ("probit_centred", "probit", "mc")
LABELS = {"map": "MAP", "ll_diag": "last-layer diag LA", "ll_kfac": "last-layer KFAC LA", "kfac": "all-layer KFAC LA",
          "ensemble": "deep ensemble"}
MODELS = ("mlp", "cnn")


class Image(nn.Module):
    """[B, 64] → [B, 1, 8, 8]."""

    def forward(self, x):
        return x.reshape(-1, 1, 8, 8)


def make_model(name: str, seed: int, n_classes: int = 10) -> nn.Module:
    torch.manual_seed(seed)
    if name == "mlp":
        return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, n_classes))
    if name == "cnn":
        return nn.Sequential(Image(), nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1, stride=2),
                             nn.ReLU(), nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, n_classes))
    raise ValueError(name)


def train(model, X, y, epochs: int, seed: int, lr=1e-3, weight_decay=5e-4, batch=64):
    model.train()
    return train_classifier(model, X, y, epochs, lr=lr, batch=batch, seed=seed, weight_decay=weight_decay).eval()


def _splits(seed: int, angles):
    from ..continual.streams import RotatedDigits

    stream = RotatedDigits(n_tasks=len(angles), max_angle=float(angles[-1]), seed=seed)
    Xtr, ytr = stream[0].train
    tests = {f"rot{a:g}" if a else "clean": stream[t].test for t, a in enumerate(angles)}
    g = torch.Generator().manual_seed(1000 + seed)
    noise = torch.rand(len(tests["clean"][0]), Xtr.shape[1], generator=g, dtype=Xtr.dtype)
    return Xtr, ytr, tests, noise


def _predictors(model_name, members, Xtr, ytr, methods, tuning="marglik", val=None, link="probit_centred",
                prior_structure="scalar"):
    net = members[0]
    preds = {}
    timings = {}
    priors = {}
    for m in methods:
        t = time.perf_counter()
        if m == "map":
            preds[m] = lambda X, net=net: torch.softmax(net(X), -1)
        elif m == "ensemble":
            preds[m] = lambda X: torch.stack([torch.softmax(n(X), -1) for n in members]).mean(0)
        else:
            subset, structure = {"ll_diag": ("last_layer", "diag"), "ll_kfac": ("last_layer", "kfac"),
                                 "kfac": ("all", "kfac")}[m]
            la = Laplace(net, "categorical", subset=subset, structure=structure, batch_size=256).fit((Xtr, ytr))
            if tuning == "cv":
                la.optimize_prior_precision("cv", val_data=val, grid=torch.logspace(-2, 4, 25),
                                            predictive="probit" if link == "mc" else link)
            else:
                la.optimize_prior_precision("marglik", n_steps=200, prior_structure=prior_structure)
            priors[m] = la.prior_precision.reshape(-1).tolist()
            kw = {"n_samples": 1000} if link == "mc" else {}
            preds[m] = lambda X, la=la, kw=kw: la.predictive(X, method=link, **kw)
        timings[m] = time.perf_counter() - t
    return preds, timings, priors


def _without_class(X, y, k):
    keep = y != k
    return X[keep], y[keep] - (y[keep] > k).long()  # labels renumbered 0..8


def _heldout_class(mname, k, seed, Xtr, ytr, val, X_test, y_test, methods, epochs, n_members, tuning, link,
                   prior_structure):
    """OOD AUROC of predictive entropy for a digit never seen in training: every method refitted on
    the nine other digits; in-distribution test digits vs the held-out digit's test images."""
    Xk, yk = _without_class(Xtr, ytr, k)
    val_k = None if val is None else _without_class(*val, k)
    members = [train(make_model(mname, 100 * seed + j, n_classes=9), Xk, yk, epochs, seed=100 * seed + j)
               for j in range(n_members if "ensemble" in methods else 1)]
    preds, _, _ = _predictors(mname, members, Xk, yk, methods, tuning, val_k, link, prior_structure)
    ood = y_test == k
    with torch.no_grad():
        return {m: {"auroc": metrics.ood_auroc(fn(X_test[~ood]), fn(X_test[ood]))} for m, fn in preds.items()}


def run_calibration(quick: bool = True, seed: int = 0, seeds=None, models=None, methods=METHODS,
                    angles=(0, 15, 30, 45, 60), epochs: int | None = None, n_members: int = 5,
                    tuning: str = "marglik", progress: bool = False, link: str = "probit_centred",
                    prior_structure: str = "scalar", heldout_class: bool | None = None) -> dict:
    """Train, fit the Laplace variants, evaluate every split; per-seed numbers and their mean/std.

    quick: the MLP only, 2 seeds, 40 epochs (a few minutes on 2 shared cores); otherwise both
    models, 5 seeds, 60 epochs. ``tuning``: ``"marglik"`` (the evidence on the training data) or ``"cv"``
    (validation NLL on 20 % of the training digits, held out from training for every method).
    ``link``: the Laplace predictive (``"probit_centred"``, ``"probit"`` or ``"mc"`` with 1,000 draws);
    ``prior_structure``: ``"scalar"`` or ``"layerwise"`` (marglik only); ``heldout_class``: also
    refit everything without one digit for the held-out-class OOD AUROC (default: not ``quick``).
    Returns ``{"models": {model: {"per_seed": [...], "mean": ..., "std": ...}}, ...}``.
    """
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    seeds = list(seeds) if seeds is not None else list(range(seed, seed + (2 if quick else 5)))
    models = tuple(models) if models is not None else (("mlp",) if quick else MODELS)
    epochs = epochs or (40 if quick else 60)
    if tuning not in ("marglik", "cv"):
        raise ValueError(f"tuning must be 'marglik' or 'cv'; got {tuning!r}")
    if link not in LINKS:
        raise ValueError(f"link must be one of {list(LINKS)}; got {link!r}")
    if prior_structure not in ("scalar", "layerwise"):
        raise ValueError(f"prior_structure must be 'scalar' or 'layerwise'; got {prior_structure!r}")
    heldout_class = (not quick) if heldout_class is None else bool(heldout_class)
    bad = [m for m in methods if m not in METHODS] + [m for m in models if m not in MODELS]
    if bad:
        raise ValueError(f"unknown method(s)/model(s) {bad}; methods: {list(METHODS)}, models: {list(MODELS)}")
    out = {"seeds": seeds, "angles": list(angles), "epochs": epochs, "methods": list(methods), "ece_bins": 15,
           "tuning": tuning, "link": link, "prior_structure": prior_structure, "heldout_class": heldout_class,
           "ensemble_members": n_members, "models": {}}
    for mname in models:
        per_seed = []
        for s in seeds:
            Xtr, ytr, tests, noise = _splits(s, angles)
            val = None
            if tuning == "cv":
                perm = torch.randperm(len(Xtr), generator=torch.Generator().manual_seed(2000 + s))
                n_val = len(Xtr) // 5
                val = (Xtr[perm[:n_val]], ytr[perm[:n_val]])
                Xtr, ytr = Xtr[perm[n_val:]], ytr[perm[n_val:]]
            members = [train(make_model(mname, 100 * s + k), Xtr, ytr, epochs, seed=100 * s + k)
                       for k in range(n_members if "ensemble" in methods else 1)]
            preds, timings, priors = _predictors(mname, members, Xtr, ytr, methods, tuning, val, link, prior_structure)
            res = {"seed": s, "seconds": timings, "prior_precision": priors, "splits": {}}
            with torch.no_grad():
                for m, fn in preds.items():
                    p_clean = fn(tests["clean"][0])
                    for split, (X, y) in tests.items():
                        p = p_clean if split == "clean" else fn(X)
                        res["splits"].setdefault(split, {})[m] = metrics.summary(p, y)
                        if split == f"rot{angles[min(len(angles) - 1, len(angles) // 2 + 1)]:g}" or split == "rot45":
                            res.setdefault("reliability", {})[m] = metrics.reliability(p, y)
                    shifted = [k for k in tests if k != "clean"]
                    res["splits"].setdefault("shift", {})[m] = {
                        k: statistics.fmean(res["splits"][sp][m][k] for sp in shifted) for k in ("accuracy", "nll", "brier", "ece")}
                    res["splits"].setdefault("ood_noise", {})[m] = {"auroc": metrics.ood_auroc(p_clean, fn(noise))}
            if heldout_class:
                res["heldout_class"] = s % 10
                res["splits"]["ood_class"] = _heldout_class(mname, s % 10, s, Xtr, ytr, val, *tests["clean"], methods,
                                                            epochs, n_members, tuning, link, prior_structure)
            per_seed.append(res)
            if progress:
                print(f"{mname} seed {s}: " + ", ".join(f"{m} ECE(shift) {res['splits']['shift'][m]['ece']:.3f}" for m in methods),
                      flush=True)
        out["models"][mname] = {"per_seed": per_seed, **_aggregate(per_seed)}
    return out


def _aggregate(per_seed):
    mean, std = {}, {}
    for split, by_m in per_seed[0]["splits"].items():
        for m, vals in by_m.items():
            for k in vals:
                xs = [r["splits"][split][m][k] for r in per_seed]
                mean.setdefault(split, {}).setdefault(m, {})[k] = statistics.fmean(xs)
                std.setdefault(split, {}).setdefault(m, {})[k] = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return {"mean": mean, "std": std}


def _columns(results: dict):
    """(header, split, key, percent) of the table's columns; the held-out-class column when run."""
    mid = results["angles"][min(len(results["angles"]) - 1, len(results["angles"]) // 2 + 1)]
    cols = [("acc clean", "clean", "accuracy", True), ("NLL clean", "clean", "nll", False),
            ("ECE clean", "clean", "ece", True), ("acc shift", "shift", "accuracy", True),
            ("NLL shift", "shift", "nll", False), ("ECE shift", "shift", "ece", True),
            (f"ECE {mid:g}°", f"rot{mid:g}", "ece", True), ("AUROC noise", "ood_noise", "auroc", False)]
    first = next(iter(results["models"].values()))
    if "ood_class" in first["mean"]:
        cols.append(("AUROC class", "ood_class", "auroc", False))
    return cols


def _cell(r, split, m, k, pct, sep="±"):
    f = 100 if pct else 1
    return f"{f * r['mean'][split][m][k]:.{1 if pct else 3}f}{sep}{f * r['std'][split][m][k]:.{1 if pct else 3}f}"


def _title(results, mname, n):
    return (f"{mname.upper()} on digits, prior by {results.get('tuning', 'marglik')} "
            f"({results.get('prior_structure', 'scalar')}), Laplace predictive {results.get('link', 'probit')}, "
            f"{n} seed(s), mean ± std; shift = mean over rotations {', '.join(str(a) for a in results['angles'][1:])}°; "
            f"ECE with {results['ece_bins']} bins")


def format_table(results: dict) -> str:
    """Plain-text table: per model and method, accuracy / NLL / ECE on clean and shifted data, OOD AUROC."""
    lines = []
    cols = _columns(results)
    for mname, r in results["models"].items():
        lines.append(_title(results, mname, len(r["per_seed"])))
        lines.append(f"{'method':22} " + " ".join(f"{c[0]:>12}" for c in cols))
        for m in results["methods"]:
            lines.append(f"{LABELS[m]:22} " + " ".join(f"{_cell(r, sp, m, k, pct):>12}" for _, sp, k, pct in cols))
        lines.append("")
    return "\n".join(lines)


def markdown_tables(results: dict) -> str:
    """The docs' tables: the main one per model, then NLL on every split (the issue's target), in Markdown."""
    out = []
    cols = _columns(results)
    splits = [f"rot{a:g}" if a else "clean" for a in results["angles"]]
    for mname, r in results["models"].items():
        out.append(f"**{mname.upper()}** ({len(r['per_seed'])} seeds; prior by {results.get('tuning', 'marglik')}, "
                   f"{results.get('prior_structure', 'scalar')}; predictive {results.get('link', 'probit')})\n")
        out.append("| method | " + " | ".join(c[0] for c in cols) + " |")
        out.append("|---" * (len(cols) + 1) + "|")
        for m in results["methods"]:
            out.append(f"| {LABELS[m]} | " + " | ".join(_cell(r, sp, m, k, pct, " ± ") for _, sp, k, pct in cols) + " |")
        out.append("")
        out.append(f"NLL per split ({mname.upper()}; **bold**: lower than MAP in the mean over seeds)\n")
        out.append("| method | " + " | ".join("clean" if sp == "clean" else sp[3:] + "°" for sp in splits) + " |")
        out.append("|---" * (len(splits) + 1) + "|")
        for m in results["methods"]:
            cells = []
            for sp in splits:
                v, ref = r["mean"][sp][m]["nll"], r["mean"][sp]["map"]["nll"] if "map" in results["methods"] else None
                txt = f"{v:.3f}"
                cells.append(f"**{txt}**" if m != "map" and ref is not None and v < ref else txt)
            out.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def calibration_summary(results: dict) -> tuple[dict, str, str]:
    """(numbers, HTML text, one-line headline) for a report section."""
    numbers = {m: r["mean"] for m, r in results["models"].items()}
    first = next(iter(results["models"]))
    mu = results["models"][first]["mean"]
    laplaces = [m for m in results["methods"] if m in ("ll_diag", "ll_kfac", "kfac")] or list(results["methods"])
    best = min(laplaces, key=lambda m: mu["shift"][m]["ece"])
    headline = (f"{first.upper()} on rotated digits: ECE {100 * mu['shift']['map']['ece']:.1f} % (MAP) → "
                f"{100 * mu['shift'][best]['ece']:.1f} % ({LABELS[best]}); NLL {mu['shift']['map']['nll']:.3f} → "
                f"{mu['shift'][best]['nll']:.3f}")
    table = format_table(results).replace("&", "&amp;").replace("<", "&lt;")
    text = (f"<p>A trained network's softmax is over-confident off its training distribution. A Laplace "
            f"posterior N(θ̂, (N·F + P)⁻¹) built from the Fisher after training, with the prior precision P set by "
            f"the marginal likelihood and the linearised predictive (the probit approximation on the centred "
            f"logits, whose covariance is what the softmax sees), fixes much of that without retraining, at the "
            f"price of softer predictions on clean digits, where the MAP was already calibrated. Digits rotated "
            f"by {results['angles'][1]}–{results['angles'][-1]}° are the shifted data; uniform noise images the OOD set.</p>"
            f"<pre>{table}</pre>")
    return numbers, text, headline


def plot_reliability_diagrams(results: dict):
    """Reliability diagrams of every method, one panel per model (seed 0, digits rotated by 45°)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["models"])
    fig, axes = plt.subplots(1, len(names), figsize=(4.4 * len(names), 4.2), squeeze=False)
    for ax, model in zip(axes[0], names):
        rel = results["models"][model]["per_seed"][0]["reliability"]
        ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--")
        for m, r in rel.items():
            pts = [(c, a) for c, a, k in zip(r["confidence"], r["accuracy"], r["counts"]) if k > 0]
            ax.plot(*zip(*pts), marker="o", ms=3, label=LABELS[m])
        ax.set_xlabel("confidence (max probability)")
        ax.set_ylabel("accuracy")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{model.upper()}, test digits rotated 45°, seed {results['seeds'][0]}; "
                     f"Laplace: {results.get('link', 'probit')}", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def plot_shift_curves(results: dict):
    """ECE and NLL against the rotation angle (mean over seeds) for every method; a row per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["models"])
    angles = results["angles"]
    keys = [f"rot{a:g}" if a else "clean" for a in angles]
    fig, axes = plt.subplots(len(names), 2, figsize=(8.4, 3.2 * len(names)), squeeze=False)
    for row, model in zip(axes, names):
        mu = results["models"][model]["mean"]
        for m in results["methods"]:
            row[0].plot(angles, [100 * mu[k][m]["ece"] for k in keys], marker="o", ms=3, label=LABELS[m])
            row[1].plot(angles, [mu[k][m]["nll"] for k in keys], marker="o", ms=3, label=LABELS[m])
        row[0].set_ylabel(f"{model.upper()}: ECE (%)")
        row[1].set_ylabel(f"{model.upper()}: NLL")
        for ax in row:
            ax.set_xlabel("rotation of the test digits (°)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"digits, mean over {len(results['seeds'])} seeds, prior by {results.get('tuning', 'marglik')}, "
                 f"Laplace predictive {results.get('link', 'probit')}", fontsize=9)
    fig.tight_layout()
    return fig
