"""The merging study on digits (used by ``fisherkit merge`` and benchmarks/bench_merge_prune.py).

Per seed, one MLP 64-64-64-10 is pre-trained, k copies are fine-tuned on k tasks, and the copies
are merged. Three task settings (``SETTINGS``):

* ``"permuted"`` (the main one): task 0 is plain digits, tasks 1..k−1 the same digits with the 64
  pixels shuffled by a fixed random permutation per task (permuted-MNIST style); one shared 10-way
  head. The start is pre-trained on task 0, every task is fine-tuned from it on 80 % of the training
  split, the other 20 % (the same images, permuted per task) is each task's validation set, and the
  test split (permuted per task) is each task's test set.
* ``"split"``: the start pre-trained on half the training split (all digits); one copy fine-tuned on
  digits 0–4 and one on 5–9 of the other half (75 % train, 25 % validation), sharing the 10-way head.
* ``"split-heads"``: as ``"split"``, but each task has its own 5-way head (initialised from the
  start's rows for its classes) and is scored within its classes; only the body is merged.

Merges come in *families* (``FAMILIES``): each a grid of variants (``VARIANTS``: name → merge
options) over the one hyper-parameter the method has — ε for the Fisher merges and RegMean, the scale
for task arithmetic. Per seed, the variant of a family with the best mean *validation* accuracy is
chosen and its *test* accuracy reported (the test split never chooses anything). Fishers are computed
once per (structure, kind, point) and reused across the grid.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
from torch import nn

from .prune import accuracy, make_model, train
from ..merge.core import merge_parameters

HEAD = "4"  # the head of make_model("mlp"): parameters 4.weight, 4.bias
EPS = (1e-6, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0)  # ε relative to the mean diagonal of the mean Fisher
SETTINGS = ("permuted", "split", "split-heads")


def _eps_name(e: float) -> str:
    return f"{e:g}"


def _variants():
    v = {"average": dict(method="average")}
    for s in (0.3, 0.5, 0.7, 1.0):
        v[f"task-arithmetic-s{s:g}"] = dict(method="task_arithmetic", scale=s)
    for e in (0.0, 1e-2, 0.1):
        for a in (1.0, 0.9):
            v[f"regmean-a{a:g}-eps{_eps_name(e)}"] = dict(method="regmean", damping=e, alpha=a)
    for e in EPS:
        n = _eps_name(e)
        v[f"diag-eps{n}"] = dict(structure="diag", damping=e)  # the paper: exact Fisher at each fine-tune
        v[f"diag-empirical-eps{n}"] = dict(structure="diag", damping=e, kind="empirical")
        v[f"diag-normalized-eps{n}"] = dict(structure="diag", damping=e, normalize="trace")
        v[f"diag-at-base-eps{n}"] = dict(structure="diag", damping=e, fisher_at="base")
        v[f"kfac-eps{n}"] = dict(structure="kfac", damping=e)
        v[f"kfac-normalized-eps{n}"] = dict(structure="kfac", damping=e, normalize="trace")
        v[f"kfac-at-base-eps{n}"] = dict(structure="kfac", damping=e, fisher_at="base")
        v[f"kfac-layer0-eps{n}"] = dict(structure="kfac", damping=e, average=["2", HEAD])
    return v


VARIANTS = _variants()
FAMILIES = {
    "average": ("average",),
    "task-arithmetic": tuple(n for n in VARIANTS if n.startswith("task-arithmetic-")),
    "regmean": tuple(n for n in VARIANTS if n.startswith("regmean-")),
    **{f: tuple(f"{f}-eps{_eps_name(e)}" for e in EPS)
       for f in ("diag", "diag-empirical", "diag-normalized", "diag-at-base", "kfac", "kfac-normalized",
                 "kfac-at-base", "kfac-layer0")},
}
# the paper's recipe as published (ε = 1e-6, no selection), reported next to the validated families
FIXED = ("diag-eps1e-06", "kfac-eps1e-06")
MAIN_FAMILIES = ("average", "task-arithmetic", "regmean", "diag", "kfac")


def _family_of(variant: str) -> str:
    for f, vs in FAMILIES.items():
        if variant in vs:
            return f
    raise KeyError(variant)


# ---- settings ---------------------------------------------------------------------------------------
def _subset(X, y, classes, relabel=False):
    keep = torch.isin(y, torch.tensor(classes))
    y = y[keep]
    if relabel:
        lut = torch.full((10,), -1, dtype=torch.long)
        lut[torch.tensor(classes)] = torch.arange(len(classes))
        y = lut[y]
    return X[keep], y


def setup(seed: int, setting: str = "permuted", k: int = 3, pre_epochs=None, ft_epochs=None, ft_lr=None):
    """One seed's models and data: ``dict(bases, models, trains, vals, tests, keep)``.

    ``bases[i]`` is the shared start as task i sees it (its own head in ``"split-heads"``); ``keep``
    names the parameters that are not merged (the per-task heads) or is None.
    """
    from .. import datasets

    d = datasets.load("digits", seed=seed)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(d.X_train), generator=g)
    if setting == "permuted":
        pre_epochs, ft_epochs, ft_lr = pre_epochs or 30, ft_epochs or 20, ft_lr or 1e-3
        pixels = [torch.arange(64)] + [torch.randperm(64, generator=g) for _ in range(k - 1)]
        nv = len(perm) // 5
        tr, va = perm[nv:], perm[:nv]
        base = train(make_model("mlp", seed), d.X_train[tr], d.y_train[tr], pre_epochs, seed=seed)
        trains = [(d.X_train[tr][:, q], d.y_train[tr]) for q in pixels]
        vals = [(d.X_train[va][:, q], d.y_train[va]) for q in pixels]
        tests = [(d.X_test[:, q], d.y_test) for q in pixels]
        bases, keep = [base] * k, None
    elif setting in ("split", "split-heads"):
        pre_epochs, ft_epochs, ft_lr = pre_epochs or 20, ft_epochs or 10, ft_lr or 1e-3
        groups = ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9))
        if k != 2:
            raise ValueError(f"setting {setting!r} has two tasks (digits 0-4 and 5-9); got k={k}")
        half = len(perm) // 2
        pre, rest = perm[:half], perm[half:]
        nv = len(rest) // 4
        base = train(make_model("mlp", seed), d.X_train[pre], d.y_train[pre], pre_epochs, seed=seed)
        heads = setting == "split-heads"
        Xr, yr = d.X_train[rest], d.y_train[rest]
        trains = [_subset(Xr[nv:], yr[nv:], c, heads) for c in groups]
        vals = [_subset(Xr[:nv], yr[:nv], c, heads) for c in groups]
        tests = [_subset(d.X_test, d.y_test, c, heads) for c in groups]
        bases = []
        for c in groups:
            b = copy.deepcopy(base)
            if heads:
                h = nn.Linear(base[4].in_features, len(c))
                with torch.no_grad():
                    h.weight.copy_(base[4].weight[list(c)])
                    h.bias.copy_(base[4].bias[list(c)])
                b[4] = h
            bases.append(b)
        keep = [HEAD] if heads else None
    else:
        raise ValueError(f"unknown setting {setting!r}; use one of {list(SETTINGS)}")
    models = [train(copy.deepcopy(b), X, y, ft_epochs, lr=ft_lr, seed=seed + 10 + i)
              for i, (b, (X, y)) in enumerate(zip(bases, trains))]
    return dict(bases=bases, models=models, trains=trains, vals=vals, tests=tests, keep=keep,
                config=dict(pre_epochs=pre_epochs, ft_epochs=ft_epochs, ft_lr=ft_lr, k=k))


# ---- measuring --------------------------------------------------------------------------------------
def extrapolation(merged_values, models, weights=None) -> float:
    """‖θ* − θ̄‖ / rms‖θᵢ − θ̄‖ over the merged parameters (θ̄ the λ-average): a per-coordinate convex
    combination (every diagonal merge) has |θ*ⱼ − θ̄ⱼ| ≤ maxᵢ |θᵢⱼ − θ̄ⱼ|, so the ratio is ≤ √k (≤ 1 for two
    models); a matrix-weighted average with non-commuting, ill-conditioned Fishers can land far outside."""
    k = len(models)
    weights = weights or [1.0 / k] * k
    num, den = 0.0, 0.0
    for n, v in merged_values.items():
        ps = [dict(m.named_parameters())[n].detach() for m in models]
        avg = sum(w * p for w, p in zip(weights, ps))
        num += float(((v - avg) ** 2).sum())
        den += sum(float(((p - avg) ** 2).sum()) for p in ps) / k
    return (num / max(den, 1e-300)) ** 0.5


def _load(values, model):
    m = copy.deepcopy(model)
    named = dict(m.named_parameters())
    with torch.no_grad():
        for n, v in values.items():
            named[n].copy_(v)
    return m


def evaluate(merged_values, models, sets) -> list[float]:
    """Accuracy of the merged parameters on each task, each with that task's own model for the rest (its head)."""
    return [accuracy(_load(merged_values, m), X, y) for m, (X, y) in zip(models, sets)]


def _fisher_key(opts):
    return (opts.get("structure", "diag"), opts.get("kind", "exact"), opts.get("fisher_at", "models"),
            tuple(opts.get("average") or ()))


def _fishers(key, s, names):
    from ..api import fisher

    structure, kind, at, averaged = key
    fnames = [n for n in names if n.split(".")[0] not in set(averaged) - set(s["keep"] or ())]
    points = s["bases"] if at == "base" else s["models"]
    return [fisher(p, d, kind=kind, structure=structure, params=fnames, batch_size=256)
            for p, d in zip(points, s["trains"])]


def diagnostics(s, fishers) -> dict:
    """Why merges differ: each model's Fisher trace (exact, diag, at the models) and confidence on its task."""
    out = {}
    F = fishers.get(("diag", "exact", "models", ()))
    if F is not None:
        out["fisher_trace"] = [float(f.trace()) for f in F]
        layers = {}
        for i, f in enumerate(F):
            for n, v in f.unflatten(f.diag()).items():
                per = layers.setdefault(n.split(".")[0], [0.0] * len(F))
                per[i] += float(v.sum())
        out["fisher_trace_per_layer"] = layers
    conf = []
    for m, (X, _) in zip(s["models"], s["trains"]):
        with torch.no_grad():
            conf.append(float(torch.softmax(m(X), 1).max(1).values.mean()))
    out["mean_max_prob_on_own_task"] = conf
    out["distance_from_start"] = [float(torch.cat([(p - q).detach().reshape(-1) for p, q in
                                                   zip(m.parameters(), b.parameters()) if p.shape == q.shape]).norm())
                                  for m, b in zip(s["models"], s["bases"])]
    return out


def run(seeds=(0, 1, 2), setting="permuted", families=tuple(FAMILIES), k=3, progress=None, ft_epochs=None,
        ft_lr=None, pre_epochs=None) -> dict:
    """Every variant of every family, per seed: validation and test accuracy per task, and the choice.

    ``res['acc'][variant][seed_index] = {'val': [...per task], 'test': [...]}``;
    ``res['chosen'][family][seed_index]`` = the variant chosen on validation.
    """
    k = 2 if setting != "permuted" else k
    variants = [v for f in families for v in FAMILIES[f]]
    res = {"setting": setting, "seeds": list(seeds), "families": list(families), "variants": variants,
           "acc": {v: [] for v in variants}, "extrapolation": {v: [] for v in variants}, "chosen": {},
           "finetuned": [], "start": [], "diagnostics": [], "seconds": {"fisher": {}, "merge": {}}, "config": None}
    for seed in seeds:
        s = setup(seed, setting, k, pre_epochs, ft_epochs, ft_lr)
        res["config"] = s["config"]
        models, keep = s["models"], s["keep"]
        res["start"].append(evaluate({}, s["bases"], s["tests"]))
        res["finetuned"].append([[accuracy(m, X, y) if (m is models[i] or keep is None) else float("nan")
                                  for i, (X, y) in enumerate(s["tests"])] for m in models])
        names = [n for n, p in models[0].named_parameters() if p.requires_grad and not (keep and n.split(".")[0] in keep)]
        fishers = {}
        for v in variants:
            opts = dict(VARIANTS[v])
            method = opts.get("method", "fisher")
            if method in ("fisher", "regmean"):
                key = _fisher_key(opts) if method == "fisher" else ("kfac", "exact", "models", ())
                if key not in fishers:
                    t = time.perf_counter()
                    fishers[key] = _fishers(key, s, names)
                    res["seconds"]["fisher"].setdefault("/".join(map(str, key[:3])), []).append(time.perf_counter() - t)
                for o in ("kind", "structure", "fisher_at"):
                    opts.pop(o, None)
                opts["fishers"] = fishers[key]
            if keep and opts.get("average"):
                opts["average"] = [a for a in opts["average"] if a not in keep]
            t = time.perf_counter()
            vals = merge_parameters(models, base=s["bases"][0], keep=keep, **opts)
            res["seconds"]["merge"].setdefault(v, []).append(time.perf_counter() - t)
            res["acc"][v].append({"val": evaluate(vals, models, s["vals"]), "test": evaluate(vals, models, s["tests"])})
            res["extrapolation"][v].append(extrapolation(vals, models))
        for f in families:
            res["chosen"].setdefault(f, []).append(choose(res, f, -1))
        res["diagnostics"].append(diagnostics(s, fishers))
        if progress:
            avg = statistics.mean(res["acc"]["average"][-1]["test"]) if "average" in res["acc"] else float("nan")
            progress(f"seed {seed}: " + ", ".join(
                f"{f} {100 * statistics.mean(res['acc'][res['chosen'][f][-1]][-1]['test']):.1f}" for f in families)
                + f" (average {100 * avg:.1f})")
    return res


def choose(res, family, seed_index) -> str:
    """The variant of ``family`` with the best mean validation accuracy on that seed (the first of the
    grid on ties); the test accuracies are never looked at."""
    return max(FAMILIES[family], key=lambda v: statistics.mean(res["acc"][v][seed_index]["val"]))


# ---- reporting --------------------------------------------------------------------------------------
def selected(res, family) -> list[list[float]]:
    """Per seed, the test accuracies per task of the variant chosen on validation."""
    return [res["acc"][v][i]["test"] for i, v in enumerate(res["chosen"][family])]


def _mean(x):
    return statistics.mean(x)


def _hyper(variant: str) -> str:
    """The chosen hyper-parameter, readable: 'ε=0.1', 'scale=0.7', 'α=0.9 ε=0'."""
    if variant.startswith("task-arithmetic-s"):
        return "scale=" + variant[len("task-arithmetic-s"):]
    if variant.startswith("regmean-a"):
        a, e = variant[len("regmean-a"):].split("-eps")
        return f"α={a} ε={e}"
    if "-eps" in variant:
        return "ε=" + variant.rsplit("-eps", 1)[1]
    return "-"


def summary(res) -> dict:
    """Per family: mean task accuracy per seed, its difference to averaging, and whether it wins on every seed."""
    avg = [_mean(a) for a in selected(res, "average")] if "average" in res["chosen"] else None
    out = {}
    for f in res["families"]:
        means = [_mean(a) for a in selected(res, f)]
        d = [m - a for m, a in zip(means, avg)] if avg else None
        out[f] = {"mean_per_seed": means, "delta_vs_average": d, "mean": _mean(means),
                  "wins_every_seed": bool(d and all(x > 0 for x in d)), "chosen": res["chosen"][f]}
    for v in FIXED:
        if v in res["acc"]:
            means = [_mean(a["test"]) for a in res["acc"][v]]
            out[v] = {"mean_per_seed": means, "delta_vs_average": [m - a for m, a in zip(means, avg)] if avg else None,
                      "mean": _mean(means), "fixed": True}
    return out


def format_table(res) -> str:
    """Per-seed, per-task test accuracy of each family's validation-chosen variant, and the summary."""
    k = len(res["acc"]["average"][0]["test"]) if "average" in res["acc"] else len(next(iter(res["acc"].values()))[0]["test"])
    cfg = res.get("config") or {}
    lines = [f"merging {k} fine-tunes, setting {res['setting']!r} ({cfg}); test accuracy % per task, hyper-parameter "
             "chosen on validation per seed"]
    head = f"{'family':<18}{'seed':>5}{'chosen':>16}" + "".join(f"{'task ' + str(t):>8}" for t in range(k)) + \
        f"{'mean':>7}{'Δ avg':>7}{'val':>7}"
    lines.append(head)
    avg = [_mean(a) for a in selected(res, "average")] if "average" in res["chosen"] else None
    for f in res["families"]:
        for i, seed in enumerate(res["seeds"]):
            v = res["chosen"][f][i]
            t = res["acc"][v][i]["test"]
            d = f"{100 * (_mean(t) - avg[i]):+7.1f}" if avg else ""
            lines.append(f"{f if i == 0 else '':<18}{seed:>5}{_hyper(v):>16}" + "".join(f"{100 * x:8.1f}" for x in t)
                         + f"{100 * _mean(t):7.1f}{d}{100 * _mean(res['acc'][v][i]['val']):7.1f}")
    lines.append("summary: family, mean over seeds, Δ vs averaging per seed, wins on every seed")
    for f, s in summary(res).items():
        d = " ".join(f"{100 * x:+5.1f}" for x in s["delta_vs_average"]) if s["delta_vs_average"] else ""
        tag = "fixed (the paper's ε = 1e-6)" if s.get("fixed") else ("yes" if s["wins_every_seed"] else "no")
        lines.append(f"  {f:<22}{100 * s['mean']:6.1f}   {d:<40} {tag}")
    return "\n".join(lines)


def format_grid(res, family) -> str:
    """The validation / test grid of one family, mean over seeds and per seed."""
    lines = [f"{family}: variant, validation mean (per seed), test mean (per seed), ‖θ*−θ̄‖ / rms‖θᵢ−θ̄‖"]
    for v in FAMILIES[family]:
        if v not in res["acc"]:
            continue
        va = [_mean(a["val"]) for a in res["acc"][v]]
        te = [_mean(a["test"]) for a in res["acc"][v]]
        lines.append(f"  {v:<34}{100 * _mean(va):6.1f} (" + " ".join(f"{100 * x:5.1f}" for x in va) + f"){100 * _mean(te):7.1f} ("
                     + " ".join(f"{100 * x:5.1f}" for x in te) + f"){_mean(res['extrapolation'][v]):8.2f}")
    return "\n".join(lines)


def plot(res, path=None, families=None):
    """Mean task accuracy minus averaging per seed for each family's validation-chosen variant (dots),
    the family's mean (bar), and the paper's fixed recipe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summ = summary(res)
    names = [f for f in (families or res["families"]) if f != "average" and f in summ] + [v for v in FIXED if v in summ]
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    for i, f in enumerate(names):
        d = [100 * x for x in summ[f]["delta_vs_average"]]
        color = "C0" if f.startswith("kfac") else ("C2" if f.startswith("diag") else "C7")
        ax.scatter([i] * len(d), d, s=16, color=color, zorder=3)
        ax.plot([i - 0.3, i + 0.3], [sum(d) / len(d)] * 2, color="k", lw=1.2)
    ax.axhline(0, color="C3", ls="--", lw=1, label="plain averaging")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([n if n not in FIXED else n.replace("-eps1e-06", " (paper, ε=1e-6)") for n in names],
                       rotation=50, ha="right", fontsize=7)
    ax.set_ylabel("mean task accuracy − averaging (points)")
    cfg = res.get("config") or {}
    ax.set_title(f"Merging digit fine-tunes ({res['setting']}, {cfg.get('k')} tasks, {cfg.get('ft_epochs')} epochs at "
                 f"lr {cfg.get('ft_lr')}): hyper-parameter chosen on validation; dot = seed, bar = mean", fontsize=8)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=110)
    return fig


REPORT_QUICK = ("average", "task-arithmetic", "regmean", "diag", "kfac")


def report(quick: bool = True, seed: int = 0, progress: bool = False) -> dict:
    """A demo-report section: ``{"title", "text" (HTML), "numbers", "figures", "headline"}``.

    Permuted digits (3 tasks, shared head); quick: one seed, five families (about two minutes on one
    core); full: three seeds.
    """
    seeds = (seed,) if quick else (seed, seed + 1, seed + 2)
    res = run(seeds=seeds, setting="permuted", families=REPORT_QUICK,
              progress=(lambda s: print(s, flush=True)) if progress else None)
    summ = summary(res)
    numbers = {"mean_task_accuracy": {f: s["mean"] for f, s in summ.items()},
               "delta_vs_average_per_seed": {f: s["delta_vs_average"] for f, s in summ.items()},
               "chosen": {f: res["chosen"][f] for f in res["families"]},
               "extrapolation": {f: _mean([res["extrapolation"][v][i] for i, v in enumerate(res["chosen"][f])])
                                 for f in res["families"]},
               "seeds": list(seeds)}
    rows = "".join(f"<tr><td>{f}</td><td>{', '.join(_hyper(v) for v in res['chosen'][f]) if f in res['chosen'] else 'ε = 1e-6'}"
                   f"</td><td>{100 * summ[f]['mean']:.1f} %</td><td>"
                   + " ".join(f"{100 * d:+.1f}" for d in summ[f]["delta_vs_average"]) + "</td></tr>" for f in summ)
    text = f"""
<p>One MLP pre-trained on digits, fine-tuned on three tasks — plain digits and two pixel permutations of
them (shared head) — and merged. Each method's one hyper-parameter (ε for the Fisher merges and RegMean, the
scale for task arithmetic) is chosen on a validation split; the table gives the mean of the three tasks'
test accuracies and the difference to plain averaging per seed.</p>
<table class="small"><tr><th>merge</th><th>chosen</th><th>mean task accuracy</th><th>Δ vs averaging</th></tr>{rows}</table>
<p>Averaging halves every task's move away from the start, so the permuted tasks lose most of what their
fine-tunes learned; the Fisher weights each coordinate (diag) or each layer's input and output directions
(KFAC) by how much each task's predictions depend on it. See docs/merging.md for five seeds, the other
settings (where the Fisher does not help) and the ablations.</p>"""
    headline = (f"merge (permuted digits): averaging {100 * summ['average']['mean']:.1f} %, diag Fisher "
                f"{100 * summ['diag']['mean']:.1f} %, KFAC Fisher {100 * summ['kfac']['mean']:.1f} %")
    return {"title": "Merging fine-tuned models with the Fisher", "text": text, "numbers": numbers,
            "figures": {"merge_permuted": plot(res)}, "headline": headline}
