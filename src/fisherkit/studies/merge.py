"""The merging study on digits (used by ``fisherkit merge`` and benchmarks/bench_merge_prune.py).

Per seed: pre-train an MLP 64-64-64-10 on all ten digits (half the training split); fine-tune two
copies, one on digits 0–4 and one on 5–9 (the other half), sharing the 10-way head; merge them with
each variant; report test accuracy on each task's digits (10-way argmax) and their mean.
A variant is (label, merge options); Fishers are computed once per (structure, kind, point, params).
"""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

from .prune import accuracy, make_model, train
from ..merge.core import merge_parameters

HEAD = "4"  # the shared head of make_model("mlp"): parameters 4.weight, 4.bias
VARIANTS = {
    "average": dict(method="average"),
    "task-arithmetic": dict(method="task_arithmetic", scale=1.0),
    "regmean": dict(method="regmean", damping=0.0),
    "regmean-0.9": dict(method="regmean", alpha=0.9, damping=0.0),
    # diagonal Fisher: the paper's merge, then one change at a time
    "diag": dict(structure="diag", damping=1e-6),
    "diag-empirical": dict(structure="diag", damping=1e-6, kind="empirical"),
    "diag-normalized": dict(structure="diag", damping=1e-6, normalize="trace"),
    "diag-eps1": dict(structure="diag", damping=1.0),
    "diag-body": dict(structure="diag", damping=1e-6, average=[HEAD]),
    "diag-at-base": dict(structure="diag", damping=1e-6, fisher_at="base"),
    "diag-at-base-normalized": dict(structure="diag", damping=1e-6, fisher_at="base", normalize="trace"),
    "diag-body-at-base": dict(structure="diag", damping=1e-6, fisher_at="base", average=[HEAD]),
    # Kronecker-factored and per-layer dense Fishers
    "kfac": dict(structure="kfac", damping=1e-6),
    "kfac-normalized": dict(structure="kfac", damping=1e-6, normalize="trace"),
    "kfac-eps0.1": dict(structure="kfac", damping=0.1),
    "kfac-body": dict(structure="kfac", damping=1e-6, average=[HEAD]),
    "kfac-at-base": dict(structure="kfac", damping=1e-6, fisher_at="base"),
    "kfac-body-at-base": dict(structure="kfac", damping=1e-6, fisher_at="base", average=[HEAD]),
    "block-at-base": dict(structure="block", damping=1e-6, fisher_at="base"),
    "block-at-base-eps0.1": dict(structure="block", damping=0.1, fisher_at="base"),
}
TASKS = ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9))


def _subset(X, y, classes):
    keep = torch.isin(y, torch.tensor(classes))
    return X[keep], y[keep]


def setup(seed: int, pre_epochs=20, ft_epochs=10, ft_lr=1e-3):
    """(base, [model_a, model_b], train sets per task, test sets per task)."""
    from .. import datasets

    d = datasets.load("digits", seed=seed)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(d.X_train), generator=g)
    half = len(perm) // 2
    pre, rest = perm[:half], perm[half:]
    base = train(make_model("mlp", seed), d.X_train[pre], d.y_train[pre], pre_epochs, seed=seed)
    trains = [_subset(d.X_train[rest], d.y_train[rest], c) for c in TASKS]
    tests = [_subset(d.X_test, d.y_test, c) for c in TASKS]
    models = [train(copy.deepcopy(base), X, y, ft_epochs, lr=ft_lr, seed=seed + 10 + i) for i, (X, y) in enumerate(trains)]
    return base, models, trains, tests


def _fisher_key(opts):
    return (opts.get("structure", "diag"), opts.get("kind", "exact"), opts.get("fisher_at", "models"),
            tuple(opts.get("average") or ()))


def extrapolation(merged_values, models, weights=(0.5, 0.5)) -> float:
    """‖θ* − θ̄‖ / ‖θ_A − θ̄‖ over the merged parameters: ≤ 1 for any per-coordinate convex combination
    (every diagonal merge); a matrix-weighted average (F_A + F_B)⁻¹(F_Aθ_A + F_Bθ_B) with non-commuting,
    ill-conditioned Fishers can land far outside the segment between the models."""
    num, den = 0.0, 0.0
    for n, v in merged_values.items():
        a, b = (dict(m.named_parameters())[n].detach() for m in models)
        avg = weights[0] * a + weights[1] * b
        num += float(((v - avg) ** 2).sum())
        den += float(((a - avg) ** 2).sum())
    return (num / max(den, 1e-300)) ** 0.5


def evaluate(merged_values, template, tests):
    m = copy.deepcopy(template)
    with torch.no_grad():
        named = dict(m.named_parameters())
        for n, v in merged_values.items():
            named[n].copy_(v)
    return [accuracy(m, X, y) for X, y in tests]


def diagnostics(models, trains, fishers):
    """Why a naive Fisher merge can lose: the size of each model's Fisher, per layer and in total."""
    out = {}
    for key, Fs in fishers.items():
        if key[0] != "diag" or key[1] != "exact" or key[2] != "models" or key[3]:
            continue
        per = []
        for F in Fs:
            d = F.unflatten(F.diag())
            per.append({n: float(v.mean()) for n, v in d.items()})
        out["mean_diag_per_layer"] = per
        out["trace_ratio_a_over_b"] = float(Fs[0].trace() / Fs[1].trace())
    confid = []
    for m, (X, _) in zip(models, trains):
        with torch.no_grad():
            confid.append(float(torch.softmax(m(X), 1).max(1).values.mean()))
    out["mean_max_prob_on_own_task"] = confid
    return out


def run(seeds=(0, 1, 2), variants=tuple(VARIANTS), progress=None, ft_epochs=10, ft_lr=1e-3) -> dict:
    """res['acc'][variant] = [[acc task A, acc task B] per seed]; plus the fine-tunes and diagnostics."""
    from ..merge.core import fishers_for

    res = {"seeds": list(seeds), "variants": list(variants), "ft_epochs": ft_epochs, "ft_lr": ft_lr,
           "acc": {v: [] for v in variants}, "extrapolation": {v: [] for v in variants},
           "finetuned": [], "base": [], "diagnostics": [], "seconds": {}}
    for seed in seeds:
        base, models, trains, tests = setup(seed, ft_epochs=ft_epochs, ft_lr=ft_lr)
        res["base"].append([accuracy(base, X, y) for X, y in tests])
        res["finetuned"].append([[accuracy(m, X, y) for X, y in tests] for m in models])
        fishers = {}
        names = [n for n, _ in models[0].named_parameters()]
        for v in variants:
            opts = dict(VARIANTS[v])
            method = opts.get("method", "fisher")
            t = time.perf_counter()
            if method in ("fisher", "regmean"):
                key = _fisher_key(opts) if method == "fisher" else ("kfac", "exact", "models", ())
                if key not in fishers:
                    avg = set(opts.get("average") or ())
                    fnames = [n for n in names if n.split(".")[0] not in avg]
                    at = base if key[2] == "base" else None
                    fishers[key] = fishers_for(models, trains, fnames, structure=key[0], kind=key[1], at=at,
                                               batch_size=256)
                opts.pop("kind", None)
                opts.pop("structure", None)
                opts["fishers"] = fishers[key]
            vals = merge_parameters(models, base=base, **opts)
            res["seconds"].setdefault(v, []).append(time.perf_counter() - t)
            res["acc"][v].append(evaluate(vals, models[0], tests))
            res["extrapolation"][v].append(extrapolation(vals, models))
            if progress:
                a = res["acc"][v][-1]
                progress(f"seed {seed} {v}: {100 * a[0]:.1f} / {100 * a[1]:.1f}  mean {50 * (a[0] + a[1]):.1f}")
        res["diagnostics"].append(diagnostics(models, trains, fishers))
    return res


def format_table(res) -> str:
    import statistics

    lines = [f"merging two fine-tunes (digits 0-4 | 5-9, shared head), seeds {res['seeds']}: test accuracy %",
             f"{'variant':<24}{'task 0-4':>9}{'task 5-9':>9}{'mean':>7}{'± std':>7}{'Δ vs avg (per seed)':>24}"
             f"{'‖θ*−θ̄‖/‖θA−θ̄‖':>17}"]
    avg = [sum(a) / 2 for a in res["acc"].get("average", [])]
    for v in res["variants"]:
        accs = res["acc"][v]
        means = [sum(a) / 2 for a in accs]
        delta = " ".join(f"{100 * (m - a):+5.1f}" for m, a in zip(means, avg)) if avg else ""
        ext = res.get("extrapolation", {}).get(v) or [float("nan")]
        lines.append(f"{v:<24}{100 * statistics.mean(a[0] for a in accs):9.1f}{100 * statistics.mean(a[1] for a in accs):9.1f}"
                     f"{100 * statistics.mean(means):7.1f}{100 * (statistics.stdev(means) if len(means) > 1 else 0):7.1f}"
                     f"{delta:>24}{statistics.mean(ext):17.2f}")
    ft = res["finetuned"]
    lines.append(f"setting: fine-tunes of {res.get('ft_epochs')} epochs at lr {res.get('ft_lr')}; ± is the std over seeds "
                 "of the mean task accuracy")
    lines.append("fine-tunes alone (task A model on 0-4 / 5-9; task B model on 0-4 / 5-9): " + "; ".join(
        f"{100 * f[0][0]:.0f}/{100 * f[0][1]:.0f}, {100 * f[1][0]:.0f}/{100 * f[1][1]:.0f}" for f in ft))
    return "\n".join(lines)


def plot(res, path=None, clip=-8.0):
    """Difference to averaging in mean task accuracy, one dot per seed (bar: the mean); values below
    ``clip`` points are drawn at the clip line and labelled with their mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vs = res["variants"]
    avg = [50 * (a[0] + a[1]) for a in res["acc"]["average"]] if "average" in res["acc"] else None
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    for i, v in enumerate(vs):
        means = [50 * (a[0] + a[1]) for a in res["acc"][v]]
        d = [m - a for m, a in zip(means, avg)] if avg else means
        color = "C0" if v.startswith("kfac") else ("C2" if v.startswith("diag") else ("C1" if v.startswith("block") else "C7"))
        shown = [max(x, clip) for x in d]
        ax.scatter([i] * len(d), shown, s=16, color=color, zorder=3)
        mean = sum(d) / len(d)
        ax.plot([i - 0.3, i + 0.3], [max(mean, clip)] * 2, color="k", lw=1.2)
        if mean < clip:
            ax.annotate(f"{mean:.0f}", (i, clip), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    ax.axhline(0, color="C3", ls="--", lw=1, label="plain averaging")
    ax.set_ylim(clip - 0.5, None)
    ax.set_xticks(range(len(vs)))
    ax.set_xticklabels(vs, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("mean task accuracy − averaging (points)")
    ax.set_title(f"Merging two digit fine-tunes ({res.get('ft_epochs', 10)} epochs, lr {res.get('ft_lr', 1e-3)}): "
                 "each dot a seed, bar the mean", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=110)
    return fig


REPORT_QUICK = ("average", "regmean", "diag", "diag-normalized", "kfac-body-at-base")
REPORT_FULL = ("average", "task-arithmetic", "regmean", "diag", "diag-empirical", "diag-normalized", "diag-at-base",
               "diag-body-at-base", "kfac", "kfac-body", "kfac-body-at-base", "block-at-base")


def report(quick: bool = True, seed: int = 0, progress: bool = False) -> dict:
    """A demo-report section: ``{"title", "text" (HTML), "numbers", "figures", "headline"}``.

    Quick: one seed, five variants (about a minute on one core); full: three seeds, twelve variants.
    """
    seeds = (seed,) if quick else (seed, seed + 1, seed + 2)
    res = run(seeds=seeds, variants=REPORT_QUICK if quick else REPORT_FULL,
              progress=(lambda s: print(s, flush=True)) if progress else None)
    means = {v: [sum(a) / 2 for a in res["acc"][v]] for v in res["variants"]}
    avg = means["average"]
    numbers = {"mean_task_accuracy": {v: sum(m) / len(m) for v, m in means.items()},
               "delta_vs_average_per_seed": {v: [x - a for x, a in zip(m, avg)] for v, m in means.items()},
               "extrapolation": {v: sum(e) / len(e) for v, e in res["extrapolation"].items()},
               "trace_ratio_a_over_b": [d.get("trace_ratio_a_over_b") for d in res["diagnostics"]],
               "seeds": list(seeds)}
    rows = "".join(f"<tr><td>{v}</td><td>{100 * numbers['mean_task_accuracy'][v]:.1f} %</td><td>"
                   + " ".join(f"{100 * d:+.1f}" for d in numbers["delta_vs_average_per_seed"][v])
                   + f"</td><td>{numbers['extrapolation'][v]:.2f}</td></tr>" for v in res["variants"])
    ratios = ", ".join(f"{r:.2f}" for r in numbers["trace_ratio_a_over_b"] if r is not None)
    text = f"""
<p>One MLP pre-trained on all digits, fine-tuned once on digits 0–4 and once on 5–9 (shared head), merged.
Mean of the two tasks' test accuracies; Δ is the difference to plain averaging per seed; the last column
is ‖θ* − θ̄‖/‖θ<sub>A</sub> − θ̄‖ (≤ 1 for any per-coordinate weighted average).</p>
<table class="small"><tr><th>merge</th><th>mean task accuracy</th><th>Δ vs averaging</th><th>distance from average</th></tr>{rows}</table>
<p>tr F<sub>A</sub> / tr F<sub>B</sub> = {ratios}: the more confident fine-tune has the smaller exact Fisher, so the
paper's merge leans toward the other model; normalising each Fisher, or computing both at the shared start,
removes that. Non-diagonal Fishers can extrapolate far from the average. On digits the repaired Fisher merges
reach parity with averaging, not a consistent win (see docs/merge_prune.md).</p>"""
    best = max(numbers["mean_task_accuracy"], key=numbers["mean_task_accuracy"].get)
    headline = (f"merge: averaging {100 * numbers['mean_task_accuracy']['average']:.1f} %, diag Fisher "
                f"{100 * numbers['mean_task_accuracy'].get('diag', float('nan')):.1f} %, best {best} "
                f"{100 * numbers['mean_task_accuracy'][best]:.1f} %")
    return {"title": "Merging fine-tuned models with the Fisher", "text": text, "numbers": numbers,
            "figures": {"merge_variants": plot(res)}, "headline": headline}
