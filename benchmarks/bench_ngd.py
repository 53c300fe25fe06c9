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
# statistics every 10 steps and inverses every 20 (amortised; see the ablations), fixed damping, and Adam's
# step for the parameters KFAC does not factor (embeddings, LayerNorms: none in the digits models).
# Every result file records the settings it ran with ("kfac_settings"; --kfac overrides them for a run):
# bench_ngd.json, _lm, _extra, _retime: fallback="diag"; bench_ngd_lm1000(_ablation): update_every=5,
# inv_every=10; files before bench_ngd_lm1000_final: the heavy ball (nesterov=False). Nesterov's look-ahead
# is the one lever that moved KFAC's steps on the LM (median 0.71 → 0.58× AdamW's over seeds 20–23,
# bench_ngd_lm_explore.jsonl; fresher curvature, EMA decay, damping, momentum 0.8/0.95, more MC samples,
# graft β₂ did not).
KFAC = dict(structure="kfac", kind="mc", damping=1e-3, update_every=10, inv_every=20, ema=0.95, momentum=0.9,
            nesterov=True, graft="adam", fallback="adam")
GRIDS = {
    "adamw": (1e-3, 3e-3, 1e-2, 3e-2),
    "nadam": (1e-3, 3e-3, 1e-2, 3e-2),
    "sgd": (0.01, 0.03, 0.1, 0.3),
    "kfac": (1e-4, 3e-4, 1e-3, 3e-3),  # grafted onto Adam with momentum 0.9: ~ (1 − 0.9) × Adam's lr
    "ekfac": (1e-4, 3e-4, 1e-3, 3e-3),
    "eigenadam": (1e-4, 3e-4, 1e-3, 3e-3),  # KFACEigenAdam, momentum 0.9 (Nesterov, as KFAC)
    "soap": (1e-3, 3e-3, 1e-2, 3e-2),
    "psgd": (1e-4, 3e-4, 1e-3, 3e-3),
}
QUICK_LR = {"adamw": 3e-3, "nadam": 3e-3, "sgd": 0.1, "kfac": 3e-4, "ekfac": 3e-4, "eigenadam": 3e-4, "soap": 3e-3, "psgd": 1e-3}
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
# one factor at a time on the transformer LM (``--methods adamw,kfac,kfac:<variant>,...``)
LM_ABLATION = {
    "kfac:every-step": dict(update_every=1, inv_every=1),
    "kfac:every-10/20": dict(update_every=10, inv_every=20),
    "kfac:every-5/10": dict(update_every=5, inv_every=10),
    "kfac:fallback-diag": dict(fallback="diag"),
    "kfac:reduce": dict(kfac_approx="reduce"),
    "kfac:empirical": dict(kind="empirical"),
    "kfac:damping=1e-2": dict(damping=1e-2),
    "kfac:damping=1e-4": dict(damping=1e-4),
    "kfac:ema=0.8": dict(ema=0.8),
    "kfac:no-momentum": dict(momentum=0.0),
    "kfac:warmup-cosine": {},
    "kfac:warmup-cosine-3x": {},  # the same schedule at 3 × the learning rate (--fixed-lr)
    "ekfac": dict(structure="ekfac"),
    "kfac:heavy-ball": dict(nesterov=False),  # the settings before Nesterov became the default
    "kfac:momentum=0.8": dict(momentum=0.8),
}
VARIANTS = {**ABLATION, **LM_ABLATION}
CORPUS = ["small"]  # the lm task's training text for this run (--corpus)


def heavyball_available() -> bool:
    try:
        import heavyball  # noqa: F401
    except Exception:
        return False
    return True


def make_optimizer(method, model, lr, task, seed):
    if method == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    if method == "nadam":  # Adam with Nesterov momentum (Dozat 2016): does Nesterov alone explain a gain?
        return torch.optim.NAdam(model.parameters(), lr=lr, weight_decay=0.0)
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
    cfg = {**KFAC, **(VARIANTS.get(method, {}) if variant or method == "ekfac" else {})}
    if base == "ekfac":
        cfg["structure"] = "ekfac"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # embeddings / LayerNorms fall back to the diagonal (warned once)
        return fk.optim.NaturalGradient(model, lr=lr, likelihood=task.likelihood, generator=seed, **cfg)


def schedule_factor(kind, steps):
    """The learning-rate multiplier at step t (``LambdaLR``): constant, or 10 % linear warm-up then cosine to 0
    at ``steps`` — the same for every optimizer of a run (``--schedule``)."""
    if kind == "const":
        return None
    warm = max(1, steps // 10)
    return lambda t: min(1.0, (t + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(t, steps) / steps))


def train(task, method, lr, seed, steps, eval_every, schedule="const"):
    """One run: the curve [(step, wall seconds, validation loss, CPU seconds)], training time only.

    Wall time is ``time.perf_counter`` around zero_grad/forward/backward/step; CPU time is the thread's
    (``time.thread_time``; torch runs on this one thread), which a machine shared with other jobs inflates
    much less than the wall clock."""
    model = task.model(seed)
    opt = make_optimizer(method, model, lr, task, seed)
    sched = None
    if "warmup-cosine" in method:  # torch's schedulers drive NaturalGradient unchanged
        schedule = "cosine"
    factor = schedule_factor(schedule, steps)
    if factor is not None:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    lm_closure = getattr(opt, "adaptive_damping", False)
    curve, elapsed, cpu, step = [(0, 0.0, task.eval_loss(model), 0.0)], 0.0, 0.0, 0
    epoch = 0
    while step < steps:
        for x, y in task.batches(epoch, seed):
            t0, c0 = time.perf_counter(), time.thread_time()
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
            cpu += time.thread_time() - c0
            step += 1
            if step % eval_every == 0 or step == steps:
                v = task.eval_loss(model)
                curve.append((step, elapsed, v, cpu))
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
        return [(0, 0.0, float("inf"), 0.0), (1, 0.0, float("nan"), 0.0)] if "finite" in str(e) else _raise(e)


def _raise(e):
    raise e


def final(curve):
    v = curve[-1][2]
    return v if math.isfinite(v) else float("inf")


def _point(entry):
    """(step, wall s, val, CPU s) of a curve entry; result files before CPU timing have no CPU column."""
    return (entry[0], entry[1], entry[2], entry[3] if len(entry) > 3 else None)


def reach(curve, target):
    """(steps, wall seconds, CPU seconds) at the first evaluation at or below ``target``, or Nones."""
    for e in curve:
        s, t, v, c = _point(e)
        if v <= target:
            return s, t, c
    return None, None, None


def best_within(curve, seconds, col=1):
    vals = [e[2] for e in curve if len(e) > col and e[col] <= seconds and math.isfinite(e[2])]
    return min(vals) if vals else float("inf")


def median_or_none(xs, strict=True):
    """The median over seeds, a seed that never got there counting as +∞ (None when the median is ∞).
    ``strict=False`` (result files written before ``target_rule`` existed, rendered as they were): the median
    of the seeds that got there, when at least half did."""
    if not strict:
        ok = [x for x in xs if x is not None]
        return statistics.median(ok) if len(ok) * 2 >= len(xs) and ok else None
    if not xs:
        return None
    m = statistics.median(sorted(x if x is not None else math.inf for x in xs))
    return None if math.isinf(m) else m


def grid_for(m, quick, name, lrs):
    if lrs and m in lrs.get(name, {}):  # --lrs-from: the rate an earlier grid run chose (timing re-runs)
        return (lrs[name][m],)
    if quick:
        return (QUICK_LR[m.split(":")[0]],)
    return ABLATION_GRID.get(m, GRIDS[m.split(":")[0]])


def run_task(name, methods, seeds, quick, log, lrs=None, steps=None, batch_size=None, schedule="const",
             target_rule=None):
    """Every optimizer on one task, interleaved so that all see the same stretch of machine load:
    first the learning-rate grids on ``seeds[0]`` (grid value i of every optimizer, then i + 1, ...),
    each optimizer's rate chosen by its final validation loss, then ``seeds[1:]`` (every optimizer on
    seed 1, then on seed 2, ...). No per-seed tuning."""
    task = TASKS[name]()
    task.corpus = CORPUS[0]
    if batch_size:
        task.batch_size = batch_size
    steps = steps or (QUICK_STEPS if quick else STEPS)[name]
    every = EVAL_EVERY[name]
    for m in methods:  # untimed warm-up: first calls of every optimizer (lazy inits, allocator)
        safe_train(task, m, grid_for(m, quick, name, lrs)[0], 0, 3, 3)
    grids = {m: grid_for(m, quick, name, lrs) for m in methods}
    trials = {m: {} for m in methods}
    for i in range(max(len(g) for g in grids.values())):
        for m in methods:
            if i < len(grids[m]):
                trials[m][grids[m][i]] = safe_train(task, m, grids[m][i], seeds[0], steps, every, schedule)
    chosen = {m: min(trials[m], key=lambda k: final(trials[m][k])) for m in methods}
    curves = {m: [trials[m][chosen[m]]] for m in methods}
    for s in seeds[1:]:
        for m in methods:
            curves[m].append(safe_train(task, m, chosen[m], s, steps, every, schedule))
    out = {"steps": steps, "eval_every": every, "batch_size": task.batch_size, "schedule": schedule, "methods": {}}
    if target_rule is not None:
        out["target_rule"] = target_rule
    for m in methods:
        out["methods"][m] = {"grid": list(grids[m]), "grid_final_val": {str(k): final(c) for k, c in trials[m].items()},
                             "lr": chosen[m], "curves": curves[m]}
        log(f"  {name:4s} {m:24s} lr={chosen[m]:<7g} final val "
            f"{statistics.median(final(c) for c in curves[m]):.4f}  "
            f"{statistics.median(c[-1][1] for c in curves[m]):6.1f} s wall")
    return summarise(out)


def _to(curves, target, strict=True):
    hits = [reach(c, target) for c in curves]
    return tuple(median_or_none([h[k] for h in hits], strict) for k in range(3))


def target_of(out):
    """The target validation loss of a task, by the rule fixed before the run (``target_rule``):
    ``{"rule": "best", "margin": m}``: m × AdamW's median over seeds of its lowest validation loss within the
    step budget; ``"final"`` (the rule of result files without ``target_rule``): AdamW's median final loss."""
    ref = out["methods"]["adamw"]["curves"]
    rule = out.get("target_rule") or {"rule": "final", "margin": 1.0}
    if rule["rule"] == "best":
        return rule["margin"] * statistics.median(min(e[2] for e in c) for c in ref)
    return rule["margin"] * statistics.median(final(c) for c in ref)


def summarise(out):
    """Targets, steps / wall seconds / CPU seconds to them and ratios to AdamW, from the stored curves
    (also for --render). The headline target is ``target_of``; the ``_best`` fields use AdamW's median best
    (lowest) validation loss within the run, which is stricter when the curves are noisy."""
    ref = out["methods"]["adamw"]["curves"]
    budget = statistics.median(c[-1][1] for c in ref)
    out["adamw_seconds"] = budget
    out["target"] = target_of(out)
    out["target_best"] = statistics.median(min(e[2] for e in c) for c in ref)
    strict = "target_rule" in out
    for suffix, target in (("", out["target"]), ("_best", out["target_best"])):
        a_steps, a_secs, a_cpu = _to(ref, target, strict)
        for r in out["methods"].values():
            st, se, cp = _to(r["curves"], target, strict)
            r.update({f"steps_to_target{suffix}": st, f"seconds_to_target{suffix}": se,
                      f"cpu_to_target{suffix}": cp,
                      f"steps_ratio{suffix}": (st / a_steps) if st is not None and a_steps else None,
                      f"time_ratio{suffix}": (se / a_secs) if se is not None and a_secs else None,
                      f"cpu_ratio{suffix}": (cp / a_cpu) if cp is not None and a_cpu else None})
    for r in out["methods"].values():
        per = statistics.median(c[-1][1] / max(c[-1][0], 1) for c in r["curves"])
        cpus = [_point(c[-1])[3] for c in r["curves"]]
        r.update(ms_per_step=1000 * per, final_val=statistics.median(final(c) for c in r["curves"]),
                 best_val_in_adamw_time=statistics.median(best_within(c, budget) for c in r["curves"]),
                 cpu_ms_per_step=(1000 * statistics.median(cp / max(c[-1][0], 1) for cp, c in zip(cpus, r["curves"]))
                                  if None not in cpus else None))
    return out


def fmt(x, spec):
    return "—" if x is None else format(x, spec)


def _rule_text(t):
    rule = t.get("target_rule") or {"rule": "final", "margin": 1.0}
    what = "median best" if rule["rule"] == "best" else "median final"
    return f"{rule['margin']:g} × AdamW's {what}" if rule["margin"] != 1 else f"AdamW's {what}"


def table(res):
    lines = []
    for name, t in res["tasks"].items():
        extra = "".join(f", {k} {t[k]}" for k in ("batch_size", "schedule") if k in t)
        also = "" if abs(t["target"] - t["target_best"]) < 1e-12 else f"; AdamW's median best {t['target_best']:.4f}"
        lines.append(f"\n### {name}: target val loss {t['target']:.4f} ({_rule_text(t)}{also}), {t['steps']} steps"
                     f"{extra}, {len(res['seeds'])} seed(s)\n")
        cpu = any(r.get("cpu_ms_per_step") is not None for r in t["methods"].values())
        head = ("| optimizer | lr grid | lr | final val | steps→target | ×AdamW | wall s→target | ×AdamW "
                + ("| CPU s→target | ×AdamW " if cpu else "") + "| ms/step " + ("| CPU ms/step " if cpu else "")
                + "| best val in AdamW's time | to AdamW's best: steps ×AdamW | s ×AdamW |")
        lines.append(head)
        lines.append("|" + "---|" * (head.count("|") - 1))
        for m, r in t["methods"].items():
            grid = ", ".join(f"{g:g}" for g in r["grid"])
            row = (f"| {m} | {grid} | {r['lr']:g} | {r['final_val']:.4f} | {fmt(r['steps_to_target'], '.0f')} "
                   f"| {fmt(r['steps_ratio'], '.2f')} | {fmt(r['seconds_to_target'], '.1f')} "
                   f"| {fmt(r['time_ratio'], '.2f')} ")
            if cpu:
                row += f"| {fmt(r.get('cpu_to_target'), '.1f')} | {fmt(r.get('cpu_ratio'), '.2f')} "
            row += f"| {r['ms_per_step']:.1f} "
            if cpu:
                row += f"| {fmt(r.get('cpu_ms_per_step'), '.1f')} "
            row += (f"| {r['best_val_in_adamw_time']:.4f} | {fmt(r.get('steps_ratio_best'), '.2f')} "
                    f"| {fmt(r.get('time_ratio_best'), '.2f')} |")
            lines.append(row)
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


COLORS = {"adamw": "C0", "sgd": "C1", "kfac": "C2", "ekfac": "C3", "soap": "C4", "psgd": "C5", "eigenadam": "C6", "nadam": "C7"}


def plot(res, figdir, prefix="ngd"):
    """Per task: median validation loss over seeds against steps, CPU seconds and wall seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, t in res["tasks"].items():
        cpu = all(len(e) > 3 for r in t["methods"].values() for c in r["curves"] for e in c)
        fig, axes = plt.subplots(1, 3 if cpu else 2, figsize=(15 if cpu else 10, 3.8))
        for m, r in t["methods"].items():
            if ":" in m and not t.get("plot_variants"):
                continue
            c = min(r["curves"], key=len)
            n = len(c)
            med = [statistics.median(cc[i][2] for cc in r["curves"] if len(cc) >= n) for i in range(n)]
            if not all(math.isfinite(v) for v in med):
                continue
            xs = [[p[0] for p in c]] + [[statistics.median(cc[i][col] for cc in r["curves"] if len(cc) >= n)
                                         for i in range(n)] for col in ((3, 1) if cpu else (1,))]
            color = COLORS.get(m, COLORS.get(m.split(":")[0]))  # a variant: its base method's colour, dashed
            for ax, x in zip(axes, xs):
                ax.plot(x, med, label=m, color=color, ls="-" if ":" not in m else "--")
        labels = ("training steps",) + (("training CPU seconds (1 thread)",) if cpu else ()) + \
            ("training wall seconds (shared machine)",)
        lo = hi = None
        if "target_rule" in t:  # zoom on where the target is decided: from the lowest median to AdamW's at 10 %
            ref = t["methods"]["adamw"]["curves"]
            n = min(len(c) for c in ref)
            lo = min(min(statistics.median(cc[i][2] for cc in r["curves"] if len(cc) > i)
                         for i in range(min(len(c) for c in r["curves"])))
                     for r in t["methods"].values() if all(math.isfinite(e[2]) for c in r["curves"] for e in c))
            hi = statistics.median(c[max(1, n // 10)][2] for c in ref)
        for ax, xl in zip(axes, labels):
            ax.axhline(t["target"], color="grey", ls=":", lw=1)
            ax.set_xlabel(xl)
            ax.set_ylabel("validation loss")
            ax.set_yscale("log")
            if lo is not None and hi > lo:
                ax.set_ylim(lo - 0.03 * (hi - lo), hi)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{name}: median over {len(res['seeds'])} seed(s); dotted = target ({_rule_text(t)})")
        fig.tight_layout()
        p = figdir / f"{prefix}_{name}.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        paths.append(str(p))
    return paths


def profile(task_name, methods, steps, batch_size, corpus, log, rounds=2):
    """Where a step's time goes: per optimizer, median CPU ms of forward (with the recorder's hooks),
    backward and ``step()``, split by what the step did (plain / statistics / inverse refresh), and the
    mean over ``steps`` steps. ``rounds`` rounds, the optimizers interleaved in each (the machine is shared)."""
    task = TASKS[task_name]()
    task.corpus = corpus
    if batch_size:
        task.batch_size = batch_size
    out = {}
    for rnd in range(rounds):
        for m in methods:
            model = task.model(0)
            opt = make_optimizer(m, model, grid_for(m, True, task_name, None)[0], task, 0)
            pre = getattr(opt, "pre", None)
            rows, it, epoch = [], task.batches(0, 0), 0
            for i in range(steps):
                try:
                    x, y = next(it)
                except StopIteration:
                    epoch += 1
                    it = task.batches(epoch, 0)
                    x, y = next(it)
                kind = "plain"
                if pre is not None:
                    kind = ("inverse" if pre.steps % pre.inv_every == 0 or pre.curvature is None else
                            "stats" if pre.steps % pre.update_every == 0 else "plain")
                c0 = time.thread_time()
                opt.zero_grad()
                loss = task.loss(model(x), y)
                c1 = time.thread_time()
                loss.backward()
                c2 = time.thread_time()
                opt.step()
                c3 = time.thread_time()
                rows.append((kind, 1e3 * (c1 - c0), 1e3 * (c2 - c1), 1e3 * (c3 - c2)))
            rows = rows[3:]  # first calls: lazy initialisation
            res = {"mean_ms": statistics.mean(f + b + s for _, f, b, s in rows)}
            for kind in ("plain", "stats", "inverse"):
                sel = [r for r in rows if r[0] == kind]
                if sel:
                    res[kind] = {"n": len(sel), **{k: statistics.median(r[j] for r in sel)
                                                   for j, k in ((1, "forward"), (2, "backward"), (3, "step"))}}
            out.setdefault(m, []).append(res)
            parts = "  ".join(f"{k} ×{v['n']}: fwd {v['forward']:.1f} bwd {v['backward']:.1f} step {v['step']:.1f}"
                              for k, v in res.items() if k != "mean_ms")
            log(f"  round {rnd}  {m:24s} mean {res['mean_ms']:6.1f} ms/step   {parts}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="mlp,cnn,ae,lm")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="1 seed, one preset lr per optimizer, shorter runs")
    ap.add_argument("--methods", default=None, help="comma list (default: adamw,sgd,kfac,ekfac[,soap,psgd]); "
                    "variants of KFAC are named kfac:<variant> (VARIANTS)")
    ap.add_argument("--ablation", action="store_true", help="also the one-factor KFAC ablation on the CNN")
    ap.add_argument("--digits-check", action="store_true", help="also the issue's 5-vs-10-epoch digits check")
    ap.add_argument("--steps", type=int, default=None, help="step budget of every task of this run")
    ap.add_argument("--batch-size", type=int, default=None, help="batch size of every task of this run")
    ap.add_argument("--corpus", choices=("small", "large"), default="small", help="the lm task's training text")
    ap.add_argument("--schedule", choices=("const", "cosine"), default="const",
                    help="the learning-rate schedule of every optimizer: constant, or 10%% warm-up + cosine to 0")
    ap.add_argument("--target-rule", choices=("final", "best"), default="final",
                    help="target = margin × AdamW's median final (or median best) validation loss")
    ap.add_argument("--target-margin", type=float, default=1.0)
    ap.add_argument("--profile", action="store_true",
                    help="only profile a step (CPU ms of forward / backward / step by kind) of --methods on the "
                         "first task")
    ap.add_argument("--rounds", type=int, default=2, help="--profile: interleaved rounds")
    ap.add_argument("--plot-variants", action="store_true", help="also plot the kfac:<variant> curves")
    ap.add_argument("--figure-prefix", default="ngd")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--figures", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "figures")
    ap.add_argument("--no-figures", action="store_true")
    ap.add_argument("--fixed-lr", default=None, help="METHOD=LR,...: these methods run at this rate, no grid "
                    "(the one-factor ablation: every variant at the recommended setting's rate)")
    ap.add_argument("--eval-every", type=int, default=None, help="steps between validation evaluations")
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first-seed, first-seed + 1, ...")
    ap.add_argument("--kfac", default=None, help="JSON merged into the KFAC settings for this run, e.g. "
                    "'{\"update_every\": 5, \"inv_every\": 10}' (recorded as kfac_settings)")
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
                print("figures:", ", ".join(plot(res, args.figures, args.figure_prefix)))
        return 0
    seeds = [args.first_seed] if args.quick else list(range(args.first_seed, args.first_seed + args.seeds))
    if args.kfac:
        KFAC.update(json.loads(args.kfac))
    methods = args.methods.split(",") if args.methods else (
        ["adamw", "sgd", "kfac", "ekfac"] + (["soap", "psgd"] if heavyball_available() else []))
    if "adamw" not in methods:
        methods = ["adamw"] + methods
    t0 = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", flush=True)

    if args.profile:
        name = args.tasks.split(",")[0]
        prof = profile(name, methods, args.steps or 60, args.batch_size, args.corpus, log, args.rounds)
        if args.out:
            args.out.write_text(json.dumps({"task": name, "batch_size": args.batch_size, "corpus": args.corpus,
                                            "kfac_settings": KFAC, "variants": {m: VARIANTS.get(m) for m in methods},
                                            "profile": prof}, indent=1))
        return 0
    rule = {"rule": args.target_rule, "margin": args.target_margin}
    res = {"quick": args.quick, "seeds": seeds, "methods": methods, "kfac_settings": KFAC, "grids": GRIDS,
           "variants": {m: VARIANTS[m] for m in methods if m in VARIANTS}, "corpus": args.corpus,
           "torch_threads": 1, "heavyball": heavyball_available(), "tasks": {}}
    lrs = {}
    for path in args.lrs_from or []:
        for name, t in json.loads(path.read_text())["tasks"].items():
            lrs.setdefault(name, {}).update({m: r["lr"] for m, r in t["methods"].items()})
    res["lrs_from"] = [str(p) for p in args.lrs_from or []]
    for item in (args.fixed_lr.split(",") if args.fixed_lr else []):  # METHOD=LR: no grid for it
        m, _, v = item.rpartition("=")
        for name in args.tasks.split(","):
            lrs.setdefault(name, {})[m] = float(v)
    res["fixed_lr"] = args.fixed_lr
    CORPUS[0] = args.corpus
    if args.eval_every:
        EVAL_EVERY.update({k: args.eval_every for k in EVAL_EVERY})
    for name in args.tasks.split(","):
        log(f"task {name}")
        res["tasks"][name] = run_task(name, methods, seeds, args.quick, log, lrs, args.steps, args.batch_size,
                                      args.schedule, rule)
        res["tasks"][name]["plot_variants"] = args.plot_variants
    if args.ablation:
        log("ablation on cnn")
        res["ablation"] = run_task("cnn", ["adamw"] + list(ABLATION), seeds, args.quick, log, target_rule=rule)
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
        print("figures:", ", ".join(plot(res, args.figures, args.figure_prefix)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
