"""Fisher-weighted merging and Fisher pruning on sklearn digits: accuracy over seeds, and cost.

Pruning (issue 16): an MLP 64-64-64-10 and a small CNN trained on the digits training split, pruned
one-shot to 50/70/80/90/95 % by magnitude (global, per layer), OBD, WoodFisher (blocks of 64) and
KFAC-OBS (each Fisher method with and without its OBS update), then fine-tuned 2 epochs with the
masks held; the char transformer of ngd_tasks.py pruned to 50/70/90 % (prune-lm); one-shot against
2 and 4 steps at one fine-tuning budget on the MLP (prune-steps). Cost: each Fisher and each prune
call as a multiple of one training epoch (cost; --archs mlp,cnn,lm).

Merging (fisherkit.studies.merge): an MLP pre-trained once, fine-tuned on k tasks, merged by
averaging, task arithmetic, RegMean and Fisher merges (diag / kfac; exact or empirical Fisher; at the
fine-tunes or at the shared start; raw or trace-normalised; only the first layer). Every method's one
hyper-parameter (ε, the task-arithmetic scale) is chosen per seed on a validation split; the test split
reports. Settings: "permuted" (plain digits + pixel-permuted copies, shared head), "split" (digits
0-4 | 5-9, shared head), "split-heads" (0-4 | 5-9, a head per task, body merged).

    python benchmarks/bench_merge_prune.py              # 3 seeds, everything (~1.5 h on 2 shared cores)
    python benchmarks/bench_merge_prune.py --quick      # 1 seed, fewer methods, variants and steps
    python benchmarks/bench_merge_prune.py --only merge --seeds 5 --setting permuted
    python benchmarks/bench_merge_prune.py --only merge --seeds 5 --setting split --families average,diag,kfac
    python benchmarks/bench_merge_prune.py --only cost   # Fisher + prune call vs one epoch, seed 0 (~2 min)
    python benchmarks/bench_merge_prune.py --only prune-lm     # char transformer, 3 seeds (~40 min)
    python benchmarks/bench_merge_prune.py --only prune-steps  # MLP, one-shot vs a few steps (~10 min)
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import torch

from fisherkit.studies import merge as merge_ex
from fisherkit.studies import prune as prune_ex

ROOT = Path(__file__).resolve().parent.parent
QUICK_FAMILIES = ("average", "task-arithmetic", "regmean", "diag", "kfac")


def cost(archs=("mlp", "cnn"), seed=0, sparsity=0.9):
    """Fisher passes and prune calls as multiples of one training epoch (best of 3), one seed, fixed Fisher."""
    from fisherkit import datasets, fisher
    from fisherkit.prune import prune

    out = {}
    for arch in archs:
        if arch == "lm":
            out["lm"] = cost_lm(seed, sparsity)
            continue
        d = datasets.load("digits", seed=seed)
        net = prune_ex.train(prune_ex.make_model(arch, seed), d.X_train, d.y_train, 40, seed=seed)
        epochs = []
        for _ in range(3):
            t = time.perf_counter()
            prune_ex.train(prune_ex.make_model(arch, seed), d.X_train, d.y_train, 1, seed=seed)
            epochs.append(time.perf_counter() - t)
        e = min(epochs)
        weights = [n for n, p in net.named_parameters() if p.dim() > 1]
        row = {"epoch_seconds": e}
        for method, structure in (("obd", "diag"), ("kfac", "kfac"), ("woodfisher", "block")):
            t = time.perf_counter()
            params = [n for n, _ in net.named_parameters()] if structure == "kfac" else weights
            F = fisher(net, (d.X_train, d.y_train), structure=structure, params=params, batch_size=256)
            tf = time.perf_counter() - t
            t = time.perf_counter()
            p = prune(net, sparsity=sparsity, method=method, fisher=F, **({"block_size": 64} if method == "woodfisher" else {}))
            tp = time.perf_counter() - t
            row[method] = {"fisher_epochs": tf / e, "prune_epochs": tp / e, "accuracy": prune_ex.accuracy(p, d.X_test, d.y_test)}
        out[arch] = row
        print(f"{arch}: epoch {1e3 * e:.0f} ms; " + "; ".join(
            f"{m}: Fisher {v['fisher_epochs']:.1f}×, prune {v['prune_epochs']:.1f}× (acc {100 * v['accuracy']:.1f} %)"
            for m, v in row.items() if m != "epoch_seconds"), flush=True)
    return out


LM_METHODS = {  # label: (method, options) — pruning the char transformer's Linear weights
    "magnitude": ("magnitude", dict(scope="global")),
    "magnitude-layer": ("magnitude", dict(scope="layer")),
    "obd": ("obd", dict()),
    "woodfisher": ("woodfisher", dict(block_size=64)),
    "kfac": ("kfac", dict()),
    "kfac-noupdate": ("kfac", dict(update=False)),
}


def _ngd_tasks():
    """benchmarks/ngd_tasks.py (the char transformer), importable whatever the caller's sys.path."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    import ngd_tasks

    return ngd_tasks


def lm_accuracy_and_loss(task, model):
    """Validation next-character accuracy and mean NLL per token (Python's difflib source, held out)."""
    ngd_tasks = _ngd_tasks()

    _, val = task.data()
    starts = torch.arange(0, len(val) - ngd_tasks.CONTEXT - 1, ngd_tasks.CONTEXT)
    x, y = ngd_tasks._windows(val, starts)
    hits, nll = 0, 0.0
    with torch.no_grad():
        for i in range(0, len(x), 256):
            out = model(x[i:i + 256])
            hits += int((out.argmax(-1) == y[i:i + 256]).sum())
            nll += float(torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y[i:i + 256].reshape(-1),
                                                           reduction="sum"))
    return hits / y.numel(), nll / y.numel()


def lm_train(task, model, steps, lr, seed, guard=None):
    """AdamW on the task's random training windows; ``guard(model, opt)`` keeps masks applied."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    handle = guard(model, opt) if guard else None
    done, epoch = 0, 0
    while done < steps:
        for x, y in task.batches(epoch, seed):
            if done == steps:
                break
            opt.zero_grad()
            task.loss(model(x), y).backward()
            opt.step()
            done += 1
        epoch += 1
    if handle:
        handle.remove()
    return model


def prune_lm(seeds=(0, 1, 2), sparsities=(0.5, 0.7, 0.9), methods=tuple(LM_METHODS), train_steps=800, lr=3e-3,
             fisher_windows=256, finetune_steps=25):
    """The char-level transformer of ngd_tasks (2 blocks, d = 64, context 32) trained ``train_steps``
    steps, its Linear weights (q, k, v, o, up, down, head) pruned one-shot by each method, then
    ``finetune_steps`` steps of fine-tuning with the masks held. Fishers: kind="mc" (one sampled
    label per position), on ``fisher_windows`` training windows."""
    import warnings

    ngd_tasks = _ngd_tasks()

    from fisherkit.prune import keep_masked, prune
    from fisherkit.prune.core import compute_fisher
    from fisherkit.prune._checks import prunable_weights

    task = ngd_tasks.TASKS["lm"]()
    res = {"seeds": list(seeds), "sparsities": list(sparsities), "methods": list(methods),
           "config": dict(train_steps=train_steps, lr=lr, fisher_windows=fisher_windows, finetune_steps=finetune_steps,
                          steps_per_epoch=task.steps_per_epoch, batch=task.batch_size, context=ngd_tasks.CONTEXT),
           "dense": [], "acc": {m: {str(s): {"oneshot": [], "finetuned": []} for s in sparsities} for m in methods},
           "seconds": {"epoch": [], "fisher": {}, "prune": {m: [] for m in methods}}, "warnings": []}
    for seed in seeds:
        t = time.perf_counter()
        net = lm_train(task, task.model(seed), train_steps, lr, seed)
        res["seconds"]["epoch"].append((time.perf_counter() - t) * task.steps_per_epoch / train_steps)
        res["dense"].append(lm_accuracy_and_loss(task, net))
        print(f"lm seed {seed}: dense val accuracy {100 * res['dense'][-1][0]:.1f} %, loss {res['dense'][-1][1]:.3f}; "
              f"epoch ({task.steps_per_epoch} steps) {res['seconds']['epoch'][-1]:.1f} s", flush=True)
        train_ids, _ = task.data()
        g = torch.Generator().manual_seed(seed + 500)
        starts = torch.randint(0, len(train_ids) - ngd_tasks.CONTEXT - 1, (fisher_windows,), generator=g)
        data = ngd_tasks._windows(train_ids, starts)
        names = prunable_weights(net)
        fishers = {}
        for m in methods:
            method, opts = LM_METHODS[m]
            if method != "magnitude" and method not in fishers:
                t = time.perf_counter()
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    fishers[method] = compute_fisher(net, data, method, names, kind="mc",
                                                     generator=torch.Generator().manual_seed(seed), batch_size=32)
                res["warnings"] += sorted({str(w.message)[:160] for w in caught})
                res["seconds"]["fisher"].setdefault(method, []).append(time.perf_counter() - t)
            for s in sparsities:
                t = time.perf_counter()
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    p = prune(net, sparsity=s, method=method, fisher=fishers.get(method), **opts)
                res["warnings"] += sorted({str(w.message)[:160] for w in caught})
                res["seconds"]["prune"][m].append(time.perf_counter() - t)
                res["acc"][m][str(s)]["oneshot"].append(lm_accuracy_and_loss(task, p))
                lm_train(task, p, finetune_steps, 1e-3, seed + 1000, guard=keep_masked)
                res["acc"][m][str(s)]["finetuned"].append(lm_accuracy_and_loss(task, p))
                a, f = res["acc"][m][str(s)]["oneshot"][-1], res["acc"][m][str(s)]["finetuned"][-1]
                print(f"lm seed {seed} {m:<16}{s:5.2f}: one-shot acc {100 * a[0]:5.1f} % loss {a[1]:.3f}; "
                      f"fine-tuned {100 * f[0]:5.1f} % {f[1]:.3f}", flush=True)
    res["warnings"] = sorted(set(res["warnings"]))
    return res


def format_lm(res) -> str:
    import statistics as st

    def ms(v):
        return st.mean(v), (st.stdev(v) if len(v) > 1 else 0.0)

    acc0, loss0 = ms([d[0] for d in res["dense"]])[0], ms([d[1] for d in res["dense"]])[0]
    lines = [f"char transformer (seeds {res['seeds']}): dense val accuracy {100 * acc0:.1f} %, loss {loss0:.3f}; cells: "
             "val accuracy % one-shot (± std) / after the fine-tune, and val loss one-shot / fine-tuned",
             f"{'method':<18}" + "".join(f"{int(100 * s):>30}%" for s in res["sparsities"])]
    for m in res["methods"]:
        cells = []
        for s in res["sparsities"]:
            a = res["acc"][m][str(s)]
            mo, so = ms([x[0] for x in a["oneshot"]])
            mf = ms([x[0] for x in a["finetuned"]])[0]
            lo, lf = ms([x[1] for x in a["oneshot"]])[0], ms([x[1] for x in a["finetuned"]])[0]
            cells.append(f"{100 * mo:4.1f}±{100 * so:3.1f}/{100 * mf:4.1f} {lo:5.2f}/{lf:4.2f}")
        lines.append(f"{m:<18}" + "".join(f"{c:>31}" for c in cells))
    ep = ms(res["seconds"]["epoch"])[0]
    cost = ", ".join(f"{k} Fisher {ms(v)[0] / ep:.1f}×" for k, v in res["seconds"]["fisher"].items())
    cost += "; prune " + ", ".join(f"{m} {ms(v)[0] / ep:.2f}×" for m, v in res["seconds"]["prune"].items())
    lines.append(f"cost vs one epoch ({res['config']['steps_per_epoch']} steps, {ep:.1f} s): {cost}")
    return "\n".join(lines)


def plot_lm(res, path):
    import statistics as st

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    xs = [100 * s for s in res["sparsities"]]
    for i, m in enumerate(res["methods"]):
        for kind, style in (("oneshot", "-"), ("finetuned", "--")):
            for ax, j in zip(axes, (0, 1)):
                ys = [st.mean(x[j] for x in res["acc"][m][str(s)][kind]) * (100 if j == 0 else 1) for s in res["sparsities"]]
                ax.plot(xs, ys, style, color=f"C{i}", marker="o", ms=3, label=m if kind == "oneshot" else None)
    for ax, j in zip(axes, (0, 1)):
        ax.axhline(st.mean(d[j] for d in res["dense"]) * (100 if j == 0 else 1), color="k", lw=0.8, ls=":")
        ax.set_xlabel("sparsity of the Linear weights (%)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("val next-char accuracy (%)")
    axes[1].set_ylabel("val loss (nats / char)")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"char transformer, one-shot (solid) and after {res['config']['finetune_steps']} fine-tuning steps "
                 "(dashed); dotted: dense", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return fig


def cost_lm(seed=0, sparsity=0.9, train_steps=300, fisher_windows=256):
    """The char transformer: Fisher passes and prune calls (90 %) against one epoch (50 steps of 32
    windows, best of 3), measured in one process right after each other."""
    import warnings

    ngd_tasks = _ngd_tasks()

    from fisherkit.prune import prune
    from fisherkit.prune._checks import prunable_weights
    from fisherkit.prune.core import compute_fisher

    task = ngd_tasks.TASKS["lm"]()
    net = lm_train(task, task.model(seed), train_steps, 3e-3, seed)
    epochs = []
    for _ in range(3):
        m = copy.deepcopy(net)
        t = time.perf_counter()
        lm_train(task, m, task.steps_per_epoch, 1e-3, seed + 7)
        epochs.append(time.perf_counter() - t)
    e = min(epochs)
    train_ids, _ = task.data()
    starts = torch.randint(0, len(train_ids) - ngd_tasks.CONTEXT - 1, (fisher_windows,),
                           generator=torch.Generator().manual_seed(seed + 500))
    data = ngd_tasks._windows(train_ids, starts)
    names = prunable_weights(net)
    row = {"epoch_seconds": e, "fisher_windows": fisher_windows}
    for method in ("obd", "woodfisher", "kfac"):
        t = time.perf_counter()
        F = compute_fisher(net, data, method, names, kind="mc", generator=torch.Generator().manual_seed(seed),
                           batch_size=32)
        tf = time.perf_counter() - t
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prune(net, sparsity=sparsity, method=method, fisher=F, **({"block_size": 64} if method == "woodfisher" else {}))
        row[method] = {"fisher_epochs": tf / e, "prune_epochs": (time.perf_counter() - t) / e}
    print(f"lm: epoch {e:.2f} s; " + "; ".join(f"{m}: Fisher {v['fisher_epochs']:.2f}×, prune {v['prune_epochs']:.2f}×"
                                              for m, v in row.items() if isinstance(v, dict)), flush=True)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="1 seed; MLP pruning; a short LM; 5 merge families")
    ap.add_argument("--only", choices=["merge", "prune", "cost", "prune-lm", "prune-steps"], default=None)
    ap.add_argument("--archs", default="mlp,cnn")
    ap.add_argument("--setting", default="permuted", choices=list(merge_ex.SETTINGS), help="merging: the tasks")
    ap.add_argument("--families", default=None, help="comma-separated merge families (default: all)")
    ap.add_argument("--k", type=int, default=3, help="merging, permuted: number of tasks")
    ap.add_argument("--ft-epochs", type=int, default=None, help="merging: fine-tuning epochs (default per setting)")
    ap.add_argument("--ft-lr", type=float, default=None, help="merging: fine-tuning learning rate (default per setting)")
    ap.add_argument("--tag", default="", help="suffix of the merge JSON and figure names")
    ap.add_argument("--json", default=None, help="default: benchmarks/results/bench_merge_prune[_<only>].json")
    ap.add_argument("--figures", default=str(ROOT / "docs" / "figures"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    seeds = tuple(range(1 if args.quick else args.seeds))
    out = {"machine": platform.platform(), "torch": torch.__version__, "seeds": list(seeds), "started": time.ctime()}
    figs = Path(args.figures)
    figs.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "prune"):
        out["prune"] = {}
        for arch in (["mlp"] if args.quick else [a for a in args.archs.split(",") if a != "lm"]):  # lm: prune-lm
            t = time.perf_counter()
            res = prune_ex.run(arch, seeds=seeds)
            res["wall_seconds"] = time.perf_counter() - t
            print(prune_ex.format_table(res), "\n", flush=True)
            prune_ex.plot(res, figs / f"prune_{arch}.png")
            out["prune"][arch] = res
    if args.only in (None, "prune-lm"):
        t = time.perf_counter()
        res = prune_lm(seeds=seeds, **(dict(train_steps=200, sparsities=(0.5, 0.9), methods=("magnitude", "obd", "kfac"))
                                        if args.quick else {}))
        res["wall_seconds"] = time.perf_counter() - t
        print(format_lm(res), "\n", *res["warnings"], flush=True)
        plot_lm(res, figs / "prune_lm.png")
        out["prune_lm"] = res
    if args.only in (None, "prune-steps"):
        t = time.perf_counter()
        res = prune_ex.run_steps(seeds=seeds, progress=lambda s: print(s, flush=True),
                                 **(dict(targets=(0.9,), steps=(1, 2)) if args.quick else {}))
        res["wall_seconds"] = time.perf_counter() - t
        print(prune_ex.format_steps(res), flush=True)
        prune_ex.plot_steps(res, figs / "prune_steps_mlp.png")
        out["prune_steps"] = res
    if args.only in (None, "cost"):
        out["cost"] = cost(("mlp",) if args.quick else tuple(args.archs.split(",")))
    if args.only in (None, "merge"):
        families = tuple(args.families.split(",")) if args.families else (
            QUICK_FAMILIES if args.quick else tuple(merge_ex.FAMILIES))
        t = time.perf_counter()
        res = merge_ex.run(seeds=seeds, setting=args.setting, families=families, k=args.k, ft_epochs=args.ft_epochs,
                           ft_lr=args.ft_lr, progress=lambda s: print(s, flush=True))
        res["wall_seconds"] = time.perf_counter() - t
        print(merge_ex.format_table(res), flush=True)
        for f in families:
            if f != "average":
                print(merge_ex.format_grid(res, f), flush=True)
        for s, d in zip(seeds, res["diagnostics"]):
            print(f"seed {s}: tr F_i = " + ", ".join(f"{x:.3g}" for x in d.get("fisher_trace", [])) +
                  "; mean max-probability on own task " + ", ".join(f"{x:.3f}" for x in d["mean_max_prob_on_own_task"]) +
                  "; ‖θ_i − θ_0‖ " + ", ".join(f"{x:.2f}" for x in d["distance_from_start"]), flush=True)
        name = f"merge_{args.setting}{args.tag}"
        merge_ex.plot(res, figs / f"{name}.png")
        out["merge"] = res
    if args.json is None and args.only == "merge":
        args.json = str(ROOT / "benchmarks" / "results" / f"bench_merge_prune_{name}.json")
    if args.json is None:
        tag = "" if args.only is None else f"_{args.only}"
        args.json = str(ROOT / "benchmarks" / "results" / f"bench_merge_prune{tag}.json")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1, default=float))
    print(f"wrote {args.json} and figures in {figs}")


if __name__ == "__main__":
    main()
