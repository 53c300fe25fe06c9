"""The pruning study on digits (used by ``fisherkit prune`` and benchmarks/bench_merge_prune.py).

Per seed: train an MLP 64-64-64-10 (or a small CNN) on the digits training split; compute the three
Fishers once (diag, block, kfac; exact, on the training data); prune one-shot to each sparsity with
each method; test accuracy one-shot and after a short fine-tune with the masks held.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from .training import train_classifier
from ..prune.core import prune
from ..prune.masks import keep_masked

SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95)
# (label, method, options)
METHOD_SPECS = {
    "magnitude": ("magnitude", dict(scope="global")),
    "magnitude-layer": ("magnitude", dict(scope="layer")),
    "obd": ("obd", dict()),
    "woodfisher": ("woodfisher", dict(block_size=64)),
    "woodfisher-noupdate": ("woodfisher", dict(block_size=64, update=False)),
    "kfac": ("kfac", dict()),
    "kfac-noupdate": ("kfac", dict(update=False)),
}
FISHER_OF = {"magnitude": None, "obd": "diag", "woodfisher": "block", "kfac": "kfac"}


def make_model(arch: str, seed: int) -> nn.Module:
    with torch.random.fork_rng():  # seeded initialisation without touching the caller's RNG
        torch.manual_seed(seed)
        if arch == "mlp":
            return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        if arch == "cnn":
            return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.ReLU(), nn.Flatten(),
                                 nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10))
    raise ValueError(f"unknown architecture {arch!r}; use 'mlp' or 'cnn'")


def train(model, X, y, epochs, lr=1e-3, batch=64, seed=0, guard=None):
    """Adam on cross-entropy, seeded shuffles; ``guard`` keeps masks applied (a keep_masked factory)."""
    return train_classifier(model, X, y, epochs, lr=lr, batch=batch, seed=seed, guard=guard)


@torch.no_grad()
def accuracy(model, X, y) -> float:
    return float((model(X).argmax(1) == y).float().mean())


def run(arch="mlp", seeds=(0, 1, 2), sparsities=SPARSITIES, methods=tuple(METHOD_SPECS), epochs=40,
        finetune_epochs=2, progress=None) -> dict:
    """Accuracy table: res['acc'][method][sparsity] = {'oneshot': [...per seed], 'finetuned': [...]}."""
    from .. import datasets
    from ..api import fisher

    res = {"arch": arch, "seeds": list(seeds), "sparsities": list(sparsities), "methods": list(methods),
           "dense": [], "acc": {m: {str(s): {"oneshot": [], "finetuned": []} for s in sparsities} for m in methods},
           "seconds": {"epoch": [], "fisher": {}, "prune": {m: [] for m in methods}}}
    for seed in seeds:
        d = datasets.load("digits", seed=seed)
        net = train(make_model(arch, seed), d.X_train, d.y_train, epochs, seed=seed)
        res["dense"].append(accuracy(net, d.X_test, d.y_test))
        t = time.perf_counter()
        train(make_model(arch, seed), d.X_train, d.y_train, 1, seed=seed)
        res["seconds"]["epoch"].append(time.perf_counter() - t)
        fishers = {}
        for structure in {FISHER_OF[METHOD_SPECS[m][0]] for m in methods} - {None}:
            t = time.perf_counter()
            names = [n for n, p in net.named_parameters() if p.dim() > 1]
            params = [n for n, _ in net.named_parameters()] if structure == "kfac" else names
            fishers[structure] = fisher(net, (d.X_train, d.y_train), structure=structure, params=params,
                                        batch_size=256)
            res["seconds"]["fisher"].setdefault(structure, []).append(time.perf_counter() - t)
        for m in methods:
            method, opts = METHOD_SPECS[m]
            F = fishers.get(FISHER_OF[method])
            for s in sparsities:
                t = time.perf_counter()
                p = prune(net, sparsity=s, method=method, fisher=F, **opts)
                res["seconds"]["prune"][m].append(time.perf_counter() - t)
                res["acc"][m][str(s)]["oneshot"].append(accuracy(p, d.X_test, d.y_test))
                train(p, d.X_train, d.y_train, finetune_epochs, seed=seed + 1000, guard=keep_masked)
                res["acc"][m][str(s)]["finetuned"].append(accuracy(p, d.X_test, d.y_test))
                if progress:
                    progress(f"{arch} seed {seed} {m} {s}: {res['acc'][m][str(s)]['oneshot'][-1]:.3f} / "
                             f"{res['acc'][m][str(s)]['finetuned'][-1]:.3f}")
    return res


def _ms(v):
    import statistics

    return statistics.mean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)


def format_table(res) -> str:
    """Rows: methods; columns: sparsities; cells 'one-shot / fine-tuned' mean test accuracy (%) over seeds."""
    head = f"{res['arch']}: dense {100 * _ms(res['dense'])[0]:.1f} %  (mean over seeds {res['seeds']}; "
    head += "one-shot / after a short fine-tune; ± = std of one-shot)"
    lines = [head, f"{'method':<22}" + "".join(f"{int(100 * s):>19}%" for s in res["sparsities"])]
    for m in res["methods"]:
        cells = []
        for s in res["sparsities"]:
            a = res["acc"][m][str(s)]
            mo, so = _ms(a["oneshot"])
            mf, _ = _ms(a["finetuned"])
            cells.append(f"{100 * mo:5.1f}±{100 * so:3.1f} / {100 * mf:5.1f}")
        lines.append(f"{m:<22}" + "".join(f"{c:>20}" for c in cells))
    ep = _ms(res["seconds"]["epoch"])[0]
    cost = ", ".join(f"{k} Fisher {_ms(v)[0] / ep:.1f}×" for k, v in res["seconds"]["fisher"].items())
    cost += "; prune " + ", ".join(f"{m} {_ms(v)[0] / ep:.2f}×" for m, v in res["seconds"]["prune"].items())
    lines.append(f"cost vs one training epoch ({1e3 * ep:.0f} ms): {cost}")
    return "\n".join(lines)


def plot(res, path=None):
    """Test accuracy against sparsity, one line per method (one-shot solid, fine-tuned dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    xs = [100 * s for s in res["sparsities"]]
    for i, m in enumerate(res["methods"]):
        c = f"C{i}"
        for kind, style in (("oneshot", "-"), ("finetuned", "--")):
            ys = [100 * _ms(res["acc"][m][str(s)][kind])[0] for s in res["sparsities"]]
            ax.plot(xs, ys, style, color=c, marker="o", ms=3, label=m if kind == "oneshot" else None)
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"digits {res['arch']}: one-shot (solid) and after a {'short'} fine-tune (dashed)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=110)
    return fig


STEP_COUNTS = (1, 2, 4)


def run_steps(seeds=(0, 1, 2), targets=(0.9, 0.95), methods=("magnitude", "obd", "kfac"), steps=STEP_COUNTS,
              budget=4, epochs=40, arch="mlp", progress=None) -> dict:
    """One-shot against a few pruning steps at the same fine-tuning budget.

    For s steps the kept fraction shrinks geometrically to ``1 − target``; the Fisher is recomputed at the
    pruned model before every step; one epoch of fine-tuning (masks held) runs between steps and
    ``budget − (s − 1)`` epochs after the last, so every schedule fine-tunes ``budget`` epochs in all
    (s = 1 is one-shot + ``budget`` epochs). Records test accuracy right after the last pruning step
    and at the end. ``res['acc'][method][target][s] = {'pruned': [...per seed], 'final': [...]}``.
    """
    from .. import datasets

    if any(s - 1 > budget for s in steps):
        raise ValueError(f"budget={budget} epochs cannot cover {max(steps) - 1} fine-tunes between steps")
    res = {"arch": arch, "seeds": list(seeds), "targets": list(targets), "methods": list(methods), "steps": list(steps),
           "budget": budget, "dense": [],
           "acc": {m: {str(t): {str(s): {"pruned": [], "final": []} for s in steps} for t in targets} for m in methods},
           "seconds": {m: {str(s): [] for s in steps} for m in methods}, "epoch": []}
    for seed in seeds:
        d = datasets.load("digits", seed=seed)
        net = train(make_model(arch, seed), d.X_train, d.y_train, epochs, seed=seed)
        res["dense"].append(accuracy(net, d.X_test, d.y_test))
        t = time.perf_counter()
        train(make_model(arch, seed), d.X_train, d.y_train, 1, seed=seed)
        res["epoch"].append(time.perf_counter() - t)
        for m in methods:
            for target in targets:
                for s in steps:
                    calls = iter(range(10_000))

                    def finetune(model):  # one epoch, masks held, its own shuffle each time
                        train(model, d.X_train, d.y_train, 1, seed=seed + 2000 + next(calls), guard=keep_masked)

                    t = time.perf_counter()
                    p = prune(net, (d.X_train, d.y_train), sparsity=target, method=m, steps=s, finetune=finetune,
                              batch_size=256)
                    res["seconds"][m][str(s)].append(time.perf_counter() - t)
                    cell = res["acc"][m][str(target)][str(s)]
                    cell["pruned"].append(accuracy(p, d.X_test, d.y_test))
                    train(p, d.X_train, d.y_train, budget - (s - 1), seed=seed + 1000, guard=keep_masked)
                    cell["final"].append(accuracy(p, d.X_test, d.y_test))
                    if progress:
                        progress(f"{arch} seed {seed} {m} {target} steps {s}: after pruning {cell['pruned'][-1]:.3f}, "
                                 f"after the fine-tunes {cell['final'][-1]:.3f}")
    return res


def format_steps(res) -> str:
    """Rows: method × steps; columns: targets; cells 'after the last pruning step / at the end' (mean ± std)."""
    lines = [f"{res['arch']}: dense {100 * _ms(res['dense'])[0]:.1f} %; one-shot vs steps at a budget of "
             f"{res['budget']} fine-tuning epochs (1 between steps, the rest after); seeds {res['seeds']}",
             f"{'method':<12}{'steps':>6}" + "".join(f"{int(100 * t):>24}%" for t in res["targets"]) + f"{'seconds':>10}"]
    for m in res["methods"]:
        for s in res["steps"]:
            cells = []
            for t in res["targets"]:
                c = res["acc"][m][str(t)][str(s)]
                mp, sp = _ms(c["pruned"])
                mf, sf = _ms(c["final"])
                cells.append(f"{100 * mp:5.1f}±{100 * sp:3.1f} / {100 * mf:5.1f}±{100 * sf:3.1f}")
            lines.append(f"{m:<12}{s:>6}" + "".join(f"{c:>25}" for c in cells)
                         + f"{_ms(res['seconds'][m][str(s)])[0]:10.1f}")
    lines.append(f"one training epoch: {1e3 * _ms(res['epoch'])[0]:.0f} ms (the seconds column: prune(...) with its "
                 "Fisher passes and in-between fine-tunes, per target)")
    return "\n".join(lines)


def plot_steps(res, path=None):
    """Final test accuracy against the number of pruning steps, one line per method and target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(res["targets"]), figsize=(4.2 * len(res["targets"]), 3.8), squeeze=False)
    for ax, t in zip(axes[0], res["targets"]):
        for i, m in enumerate(res["methods"]):
            for kind, style in (("pruned", ":"), ("final", "-")):
                ys = [100 * _ms(res["acc"][m][str(t)][str(s)][kind])[0] for s in res["steps"]]
                ax.plot(res["steps"], ys, style, color=f"C{i}", marker="o", ms=3, label=m if kind == "final" else None)
        ax.set_xticks(res["steps"])
        ax.set_xlabel("pruning steps")
        ax.set_title(f"{int(100 * t)} % sparsity", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"digits {res['arch']}: after the last pruning step (dotted) and after {res['budget']} fine-tuning "
                 "epochs in all (solid)", fontsize=9)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=110)
    return fig


def report(quick: bool = True, seed: int = 0, progress: bool = False) -> dict:
    """A demo-report section: ``{"title", "text" (HTML), "numbers", "figures", "headline"}``.

    Quick: one seed, MLP, magnitude / OBD / KFAC-OBS at 50 and 90 % (under a minute on one core);
    full: three seeds, every method and sparsity.
    """
    import statistics

    seeds = (seed,) if quick else (seed, seed + 1, seed + 2)
    res = run("mlp", seeds=seeds, sparsities=(0.5, 0.9) if quick else SPARSITIES,
              methods=("magnitude", "obd", "kfac") if quick else tuple(METHOD_SPECS),
              progress=(lambda s: print(s, flush=True)) if progress else None)
    acc = {m: {s: {k: statistics.mean(v) for k, v in res["acc"][m][s].items()} for s in res["acc"][m]}
           for m in res["methods"]}
    numbers = {"dense_accuracy": statistics.mean(res["dense"]), "accuracy": acc, "seeds": list(seeds)}
    head = "".join(f"<th>{int(100 * float(s))} %</th>" for s in res["sparsities"])
    rows = "".join(f"<tr><td>{m}</td>" + "".join(
        f"<td>{100 * acc[m][str(s)]['oneshot']:.1f} / {100 * acc[m][str(s)]['finetuned']:.1f}</td>"
        for s in res["sparsities"]) + "</tr>" for m in res["methods"])
    text = f"""
<p>An MLP 64-64-64-10 trained on digits (dense test accuracy {100 * numbers['dense_accuracy']:.1f} %), pruned
one-shot to each sparsity; cells are test accuracy one-shot / after a 2-epoch fine-tune with the masks held.
OBD ranks weights by ½F<sub>qq</sub>w² and changes nothing else; KFAC-OBS removes weights row by row with the
Optimal-Brain-Surgeon update on KFAC's input factor A, rows weighted by G's diagonal.</p>
<table class="small"><tr><th>method</th>{head}</tr>{rows}</table>"""
    s90 = "0.9" if "0.9" in acc["magnitude"] else str(res["sparsities"][-1])
    headline = "prune @" + s90 + ": " + ", ".join(f"{m} {100 * acc[m][s90]['oneshot']:.1f} %" for m in res["methods"])
    return {"title": "Pruning with the Fisher (OBD, WoodFisher, KFAC-OBS)", "text": text, "numbers": numbers,
            "figures": {"prune_mlp": plot(res)}, "headline": headline}
