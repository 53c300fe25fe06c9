"""Fisher-weighted merging and Fisher pruning on sklearn digits: accuracy over seeds, and cost.

Pruning (issue 16): an MLP 64-64-64-10 and a small CNN trained on the digits training split, pruned
one-shot to 50/70/80/90/95 % by magnitude (global, per layer), OBD, WoodFisher (blocks of 64) and
KFAC-OBS (each Fisher method with and without its OBS update), then fine-tuned 2 epochs with the
masks held. Cost: each Fisher and each prune call as a multiple of one training epoch.

Merging: an MLP pre-trained on all digits (half the training split), fine-tuned on digits 0-4 and on
5-9 (the other half, shared head), merged by averaging, task arithmetic, RegMean and Fisher merges
(diag / kfac / block; exact or empirical Fisher; at the fine-tunes or at the shared start; raw or
trace-normalised; ε; merging only the body). Per-task test accuracy and the per-seed difference to
averaging; the diagnostics (Fisher trace ratio between the two models, their confidence) explain why.

    python benchmarks/bench_merge_prune.py              # 3 seeds, everything (~30 min on 2 shared cores)
    python benchmarks/bench_merge_prune.py --quick      # 1 seed, MLP only, fewer variants
    python benchmarks/bench_merge_prune.py --only merge --seeds 5
    python benchmarks/bench_merge_prune.py --only cost   # Fisher + prune call vs one epoch, seed 0 (~2 min)
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from fisherkit.studies import merge as merge_ex
from fisherkit.studies import prune as prune_ex

ROOT = Path(__file__).resolve().parent.parent
QUICK_VARIANTS = ("average", "regmean", "diag", "diag-normalized", "kfac", "kfac-body-at-base")


def cost(archs=("mlp", "cnn"), seed=0, sparsity=0.9):
    """Fisher passes and prune calls as multiples of one training epoch (best of 3), one seed, fixed Fisher."""
    from fisherkit import datasets, fisher
    from fisherkit.prune import prune

    out = {}
    for arch in archs:
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="1 seed, MLP only, 6 merge variants")
    ap.add_argument("--only", choices=["merge", "prune", "cost"], default=None)
    ap.add_argument("--archs", default="mlp,cnn")
    ap.add_argument("--variants", default=None, help="comma-separated merge variants (default: all)")
    ap.add_argument("--ft-epochs", type=int, default=10, help="merging: fine-tuning epochs per task")
    ap.add_argument("--ft-lr", type=float, default=1e-3, help="merging: fine-tuning learning rate")
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
        for arch in (["mlp"] if args.quick else args.archs.split(",")):
            t = time.perf_counter()
            res = prune_ex.run(arch, seeds=seeds)
            res["wall_seconds"] = time.perf_counter() - t
            print(prune_ex.format_table(res), "\n", flush=True)
            prune_ex.plot(res, figs / f"prune_{arch}.png")
            out["prune"][arch] = res
    if args.only in (None, "cost"):
        out["cost"] = cost(("mlp",) if args.quick else tuple(args.archs.split(",")))
    if args.only in (None, "merge"):
        variants = tuple(args.variants.split(",")) if args.variants else (
            QUICK_VARIANTS if args.quick else tuple(merge_ex.VARIANTS))
        t = time.perf_counter()
        res = merge_ex.run(seeds=seeds, variants=variants, ft_epochs=args.ft_epochs, ft_lr=args.ft_lr)
        res["wall_seconds"] = time.perf_counter() - t
        print(merge_ex.format_table(res), flush=True)
        for s, d in zip(seeds, res["diagnostics"]):
            print(f"seed {s}: tr F_A / tr F_B = {d.get('trace_ratio_a_over_b', float('nan')):.2f}; mean max-probability "
                  f"on own task: A {d['mean_max_prob_on_own_task'][0]:.3f}, B {d['mean_max_prob_on_own_task'][1]:.3f}")
        suffix = "" if (args.ft_epochs, args.ft_lr) == (10, 1e-3) else f"_ft{args.ft_epochs}"
        merge_ex.plot(res, figs / f"merge_variants{suffix}.png")
        out["merge"] = res
    if args.json is None:
        tag = "" if args.only is None else f"_{args.only}"
        tag += "" if args.only == "prune" or (args.ft_epochs, args.ft_lr) == (10, 1e-3) else f"_ft{args.ft_epochs}"
        args.json = str(ROOT / "benchmarks" / "results" / f"bench_merge_prune{tag}.json")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1, default=float))
    print(f"wrote {args.json} and figures in {figs}")


if __name__ == "__main__":
    main()
