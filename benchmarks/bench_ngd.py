"""Benchmark: does NaturalGradient pay off on the clock? Steps AND wall time to a target validation
loss, against AdamW, SGD+momentum and (when ``heavyball`` imports) SOAP and PSGD, on four tasks of
``ngd_tasks.py`` (digits MLP, digits CNN, digits autoencoder, character transformer LM).

Protocol (every number a ratio to AdamW from the same run):
* every optimizer gets its learning rate from a grid of the same size (``GRIDS``, printed), chosen
  on seed 0 by the final validation loss; the other seeds run at that rate (no per-seed tuning);
* training steps are timed (``time.perf_counter`` around zero_grad/forward/backward/step, after an
  untimed warm-up of every optimizer); validation is evaluated every ``eval_every`` steps, untimed;
* target = AdamW's median final validation loss; per seed the first evaluation at or below it gives
  steps and seconds to target; the table shows the medians over seeds and their ratios to AdamW's
  (`—` when fewer than half of the seeds reach it), and the best validation loss within AdamW's
  median training time;
* ``--ablation`` adds one-factor-at-a-time variants of KFAC on the CNN (amortisation, grafting,
  momentum, damping rule, trust region, EKFAC, schedule).

    python benchmarks/bench_ngd.py --quick                    # ~5 minutes on 2 cores
    .venv-bench/bin/python benchmarks/bench_ngd.py --tasks cnn,lm --seeds 2 --ablation

writes ``benchmarks/results/bench_ngd[_quick].json`` and the figures ``docs/figures/ngd_<task>.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # heavyball compiles by default; CPU compile times would dominate
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ngd_tasks import TASKS  # noqa: E402

import fisherkit as fk  # noqa: E402

STEPS = {"mlp": 100, "cnn": 210, "ae": 420, "lm": 300}  # mlp: 10 epochs of 10 steps; cnn/ae: 10/20 epochs
QUICK_STEPS = {"mlp": 100, "cnn": 105, "ae": 210, "lm": 120}
EVAL_EVERY = {"mlp": 5, "cnn": 15, "ae": 21, "lm": 20}

# the natural-gradient settings (no per-task tuning): Adam-grafted step length, heavy-ball momentum,
# statistics every 10 steps and inverses every 20 (amortised; see the ablation), fixed damping
KFAC = dict(structure="kfac", kind="mc", damping=1e-3, update_every=10, inv_every=20, ema=0.95, momentum=0.9,
            graft="adam")
GRIDS = {
    "adamw": (1e-3, 3e-3, 1e-2, 3e-2),
    "sgd": (0.01, 0.03, 0.1, 0.3),
    "kfac": (1e-4, 3e-4, 1e-3, 3e-3),  # grafted onto Adam with momentum 0.9: ~ (1 − 0.9) × Adam's lr
    "ekfac": (1e-4, 3e-4, 1e-3, 3e-3),
    "eigenadam": (1e-4, 3e-4, 1e-3, 3e-3),  # KFACEigenAdam, heavy-ball momentum 0.9
    "soap": (1e-3, 3e-3, 1e-2, 3e-2),
    "psgd": (1e-4, 3e-4, 1e-3, 3e-3),
}
QUICK_LR = {"adamw": 3e-3, "sgd": 0.1, "kfac": 3e-4, "ekfac": 3e-4, "eigenadam": 3e-4, "soap": 3e-3, "psgd": 1e-3}
# the KFAC ablation (CNN): one factor changed at a time from KFAC above
ABLATION = {
    "kfac": {},
    "kfac:every-step": dict(update_every=1, inv_every=1),
    "kfac:inv_every=100": dict(inv_every=100),
    "kfac:no-graft": dict(graft=None, kl_clip=1e-2),
    "kfac:no-momentum": dict(momentum=0.0),
    "kfac:LM-damping": dict(adaptive_damping=True),
    "kfac:measured-kl": dict(kl_clip=1e-3, kl_clip_mode="measured"),
    "ekfac": dict(structure="ekfac"),
    "kfac:warmup-cosine": {},
    "kfac:budget=10%": dict(curvature_budget=0.1),  # intervals chosen from measured cost (optim.amortise)
}
ABLATION_GRID = {"kfac:no-graft": (0.03, 0.1, 0.3, 1.0)}


def heavyball_available() -> bool:
    try:
        import heavyball  # noqa: F401
    except Exception:
        return False
    return True


def make_optimizer(method, model, lr, task, seed):
    if method == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    if method == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    if method in ("soap", "psgd"):
        import heavyball

        cls = heavyball.SOAP if method == "soap" else heavyball.PSGDKron
        return cls(model.parameters(), lr=lr, weight_decay=0.0, compile_step=False)
    if method == "eigenadam":  # Adam's second moment in the KFAC eigenbasis (SOAP-style), same stack
        cfg = {k: v for k, v in KFAC.items() if k not in ("structure", "graft", "damping")}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fk.optim.KFACEigenAdam(model, lr=lr, likelihood=task.likelihood, generator=seed, **cfg)
    base, _, variant = method.partition(":")
    cfg = {**KFAC, **(ABLATION.get(method, {}) if variant or method == "ekfac" else {})}
    if base == "ekfac":
        cfg["structure"] = "ekfac"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # embeddings / LayerNorms fall back to the diagonal (warned once)
        return fk.optim.NaturalGradient(model, lr=lr, likelihood=task.likelihood, generator=seed, **cfg)


def train(task, method, lr, seed, steps, eval_every):
    model = task.model(seed)
    opt = make_optimizer(method, model, lr, task, seed)
    sched = None
    if method.endswith("warmup-cosine"):  # torch's schedulers drive NaturalGradient unchanged
        warm = max(1, steps // 10)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda t: min(1.0, (t + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(t, steps) / steps)))
    lm_closure = getattr(opt, "adaptive_damping", False)
    curve, elapsed, step = [(0, 0.0, task.eval_loss(model))], 0.0, 0
    epoch = 0
    while step < steps:
        for x, y in task.batches(epoch, seed):
            t0 = time.perf_counter()
            if lm_closure:
                def closure():
                    opt.zero_grad()
                    loss = task.loss(model(x), y)
                    loss.backward()
                    return loss
                opt.step(closure)
            else:
                opt.zero_grad()
                task.loss(model(x), y).backward()
                opt.step()
            if sched is not None:
                sched.step()
            elapsed += time.perf_counter() - t0
            step += 1
            if step % eval_every == 0 or step == steps:
                v = task.eval_loss(model)
                curve.append((step, elapsed, v))
                if not math.isfinite(v):
                    return curve
            if step >= steps:
                break
        epoch += 1
    return curve


def safe_train(*args):
    try:
        return train(*args)
    except fk.FisherkitError as e:  # e.g. a non-finite gradient at too large a learning rate
        return [(0, 0.0, float("inf")), (1, 0.0, float("nan"))] if "finite" in str(e) else _raise(e)


def _raise(e):
    raise e


def final(curve):
    v = curve[-1][2]
    return v if math.isfinite(v) else float("inf")


def reach(curve, target):
    for s, t, v in curve:
        if v <= target:
            return s, t
    return None, None


def best_within(curve, seconds):
    vals = [v for s, t, v in curve if t <= seconds and math.isfinite(v)]
    return min(vals) if vals else float("inf")


def median_or_none(xs):
    ok = [x for x in xs if x is not None]
    return statistics.median(ok) if len(ok) * 2 >= len(xs) and ok else None


def run_task(name, methods, seeds, quick, log, lrs=None):
    task = TASKS[name]()
    steps = (QUICK_STEPS if quick else STEPS)[name]
    every = EVAL_EVERY[name]
    for m in methods:  # untimed warm-up: first calls of every optimizer (lazy inits, allocator)
        safe_train(task, m, (QUICK_LR.get(m) or GRIDS.get(m, ABLATION_GRID.get(m, (1e-3,)))[0]), 0, 3, 3)
    out = {"steps": steps, "eval_every": every, "methods": {}}
    for m in methods:
        grid = (QUICK_LR[m.split(":")[0]],) if quick else ABLATION_GRID.get(m, GRIDS[m.split(":")[0]])
        if lrs and m in lrs.get(name, {}):  # --lrs-from: the rate an earlier grid run chose (timing re-runs)
            grid = (lrs[name][m],)
        trials = {lr: safe_train(task, m, lr, seeds[0], steps, every) for lr in grid}
        lr = min(trials, key=lambda k: final(trials[k]))
        curves = [trials[lr]] + [safe_train(task, m, lr, s, steps, every) for s in seeds[1:]]
        out["methods"][m] = {"grid": list(grid), "grid_final_val": {str(k): final(c) for k, c in trials.items()},
                             "lr": lr, "curves": curves}
        log(f"  {name:4s} {m:20s} lr={lr:<7g} final val {statistics.median(final(c) for c in curves):.4f}  "
            f"{statistics.median(c[-1][1] for c in curves):6.1f} s")
    return summarise(out)


def _to(curves, target):
    return (median_or_none([reach(c, target)[0] for c in curves]),
            median_or_none([reach(c, target)[1] for c in curves]))


def summarise(out):
    """Targets, steps/seconds to them and ratios to AdamW, from the stored curves (also for --render).

    Two targets: AdamW's median *final* validation loss (the headline) and AdamW's median *best*
    (lowest) validation loss within the run (``_best`` fields), which is stricter when the curves are noisy.
    """
    ref = out["methods"]["adamw"]["curves"]
    budget = statistics.median(c[-1][1] for c in ref)
    out["adamw_seconds"] = budget
    out["target"] = statistics.median(final(c) for c in ref)
    out["target_best"] = statistics.median(min(v for _, _, v in c) for c in ref)
    for suffix, target in (("", out["target"]), ("_best", out["target_best"])):
        a_steps, a_secs = _to(ref, target)
        for r in out["methods"].values():
            st, se = _to(r["curves"], target)
            r.update({f"steps_to_target{suffix}": st, f"seconds_to_target{suffix}": se,
                      f"steps_ratio{suffix}": (st / a_steps) if st is not None and a_steps else None,
                      f"time_ratio{suffix}": (se / a_secs) if se is not None and a_secs else None})
    for r in out["methods"].values():
        per = statistics.median(c[-1][1] / max(c[-1][0], 1) for c in r["curves"])
        r.update(ms_per_step=1000 * per, final_val=statistics.median(final(c) for c in r["curves"]),
                 best_val_in_adamw_time=statistics.median(best_within(c, budget) for c in r["curves"]))
    return out


def fmt(x, spec):
    return "—" if x is None else format(x, spec)


def table(res):
    lines = []
    for name, t in res["tasks"].items():
        lines.append(f"\n### {name}: target val loss {t['target']:.4f} (AdamW's median final; stricter target "
                     f"AdamW's median best {t['target_best']:.4f}), {t['steps']} steps, {len(res['seeds'])} seed(s)\n")
        lines.append("| optimizer | lr grid | lr | final val | steps→target | ×AdamW | s→target | ×AdamW | ms/step "
                     "| best val in AdamW's time | to AdamW's best: steps ×AdamW | s ×AdamW |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for m, r in t["methods"].items():
            grid = ", ".join(f"{g:g}" for g in r["grid"])
            lines.append(f"| {m} | {grid} | {r['lr']:g} | {r['final_val']:.4f} | {fmt(r['steps_to_target'], '.0f')} "
                         f"| {fmt(r['steps_ratio'], '.2f')} | {fmt(r['seconds_to_target'], '.1f')} "
                         f"| {fmt(r['time_ratio'], '.2f')} | {r['ms_per_step']:.1f} | {r['best_val_in_adamw_time']:.4f} "
                         f"| {fmt(r.get('steps_ratio_best'), '.2f')} | {fmt(r.get('time_ratio_best'), '.2f')} |")
    return "\n".join(lines)


def render(res):
    text = table(res)
    if "ablation" in res:
        text += "\n\n## KFAC ablation (CNN), one factor at a time" + table({"seeds": res["seeds"],
                                                                            "tasks": {"cnn": res["ablation"]}})
    if "digits_check" in res:
        d = res["digits_check"]
        text += (f"\n\ndigits check (train loss, median of seeds): KFAC {d['kfac']['epochs']} epochs "
                 f"{d['kfac']['train_loss']:.4f} (lr {d['kfac']['lr']:g} of {d['kfac']['grid']}) vs AdamW "
                 f"{d['adamw']['epochs']} epochs {d['adamw']['train_loss']:.4f} (lr {d['adamw']['lr']:g} of "
                 f"{d['adamw']['grid']}): {'met' if d['met'] else 'NOT met'}")
    return text


def digits_check(seeds, log):
    """The issue's check: KFAC's train loss after 5 epochs ≤ the best Adam's after 10 (4-value grids)."""
    task = TASKS["mlp"]()
    out = {}
    for m, epochs in (("kfac", 5), ("adamw", 10)):
        best = None
        for lr in GRIDS[m]:
            losses = []
            for s in seeds:
                model = task.model(s)
                opt = make_optimizer(m, model, lr, task, s)
                for ep in range(epochs):
                    for x, y in task.batches(ep, s):
                        opt.zero_grad()
                        task.loss(model(x), y).backward()
                        opt.step()
                losses.append(task.eval_loss(model, "train"))
            v = statistics.median(losses)
            if best is None or v < best[1]:
                best = (lr, v)
        out[m] = {"epochs": epochs, "grid": list(GRIDS[m]), "lr": best[0], "train_loss": best[1]}
        log(f"  digits check {m}: {epochs} epochs, best lr {best[0]:g}, median train loss {best[1]:.4f}")
    out["met"] = out["kfac"]["train_loss"] <= out["adamw"]["train_loss"]
    return out


def plot(res, figdir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, t in res["tasks"].items():
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for m, r in t["methods"].items():
            if ":" in m:
                continue
            c = min(r["curves"], key=len)
            n = len(c)
            med = [statistics.median(cc[i][2] for cc in r["curves"] if len(cc) >= n) for i in range(n)]
            if not all(math.isfinite(v) for v in med):
                continue
            secs = [statistics.median(cc[i][1] for cc in r["curves"] if len(cc) >= n) for i in range(n)]
            axes[0].plot([p[0] for p in c], med, label=m)
            axes[1].plot(secs, med, label=m)
        for ax, xl in zip(axes, ("training steps", "training seconds (1 thread)")):
            ax.axhline(t["target"], color="grey", ls=":", lw=1)
            ax.set_xlabel(xl)
            ax.set_ylabel("validation loss")
            ax.set_yscale("log")
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{name}: median over {len(res['seeds'])} seed(s); dotted = target (AdamW's final)")
        fig.tight_layout()
        p = figdir / f"ngd_{name}.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        paths.append(str(p))
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="mlp,cnn,ae,lm")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="1 seed, one preset lr per optimizer, shorter runs")
    ap.add_argument("--methods", default=None, help="comma list (default: adamw,sgd,kfac,ekfac[,soap,psgd])")
    ap.add_argument("--ablation", action="store_true", help="also the one-factor KFAC ablation on the CNN")
    ap.add_argument("--digits-check", action="store_true", help="also the issue's 5-vs-10-epoch digits check")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--figures", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "figures")
    ap.add_argument("--no-figures", action="store_true")
    ap.add_argument("--lrs-from", type=Path, nargs="+", default=None,
                    help="result JSON files whose chosen learning rates are reused (no grid): a re-timing run")
    ap.add_argument("--render", type=Path, nargs="+", default=None,
                    help="re-render tables (and figures) from result JSON files instead of running")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.render:
        for path in args.render:
            res = json.loads(path.read_text())
            for t in res["tasks"].values():
                summarise(t)
            if "ablation" in res:
                summarise(res["ablation"])
            print(render(res))
            if not args.no_figures:
                print("figures:", ", ".join(plot(res, args.figures)))
        return 0
    seeds = [0] if args.quick else list(range(args.seeds))
    methods = args.methods.split(",") if args.methods else (
        ["adamw", "sgd", "kfac", "ekfac"] + (["soap", "psgd"] if heavyball_available() else []))
    if "adamw" not in methods:
        methods = ["adamw"] + methods
    t0 = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", flush=True)

    res = {"quick": args.quick, "seeds": seeds, "methods": methods, "kfac_settings": KFAC, "grids": GRIDS,
           "torch_threads": 1, "heavyball": heavyball_available(), "tasks": {}}
    lrs = {}
    for path in args.lrs_from or []:
        for name, t in json.loads(path.read_text())["tasks"].items():
            lrs.setdefault(name, {}).update({m: r["lr"] for m, r in t["methods"].items()})
    res["lrs_from"] = [str(p) for p in args.lrs_from or []]
    for name in args.tasks.split(","):
        log(f"task {name}")
        res["tasks"][name] = run_task(name, methods, seeds, args.quick, log, lrs)
    if args.ablation:
        log("ablation on cnn")
        res["ablation"] = run_task("cnn", ["adamw"] + list(ABLATION), seeds, args.quick, log)
        res["ablation_settings"] = ABLATION
    if args.digits_check:
        res["digits_check"] = digits_check(seeds, log)
    res["total_seconds"] = time.perf_counter() - t0
    text = render(res)
    print(text)
    print(f"\ntotal {res['total_seconds']:.0f} s")
    out = args.out or Path(__file__).resolve().parent / "results" / ("bench_ngd_quick.json" if args.quick
                                                                      else "bench_ngd.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    out.with_suffix(".md").write_text(text + "\n")
    print(f"wrote {out} and {out.with_suffix('.md')}")
    if not args.no_figures:
        print("figures:", ", ".join(plot(res, args.figures)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
