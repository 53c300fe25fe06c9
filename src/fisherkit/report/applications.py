"""Sections 3–5 — the applications, each run by its own package's experiment in quick or full mode.

3. natural gradient vs SGD vs Adam (``fisherkit.studies.ngd``),
4. EWC vs fine-tuning vs L2 (``fisherkit.studies.continual``),
5. EGL active learning vs baselines (``fisherkit.studies.active``).

The report only calls their public ``run_*`` / ``plot_*`` functions and summarises what they return;
the experiments themselves (models, data, budgets) are documented on their own docs pages.
"""

from __future__ import annotations

import importlib
import inspect
import math
from typing import Any

import numpy as np

from .registry import Context, SectionResult, section


def find(module_names: tuple[str, ...], attr: str):
    """The first ``attr`` found in the given modules (a clear error naming them all otherwise)."""
    tried = []
    for name in module_names:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if not (e.name and name.startswith(e.name)):  # the module exists but an import inside it failed
                raise
            tried.append(f"{name} (missing)")
            continue
        if hasattr(mod, attr):
            return getattr(mod, attr)
        tried.append(f"{name} (no {attr})")
    raise RuntimeError(f"{attr} is not available yet: looked in {', '.join(tried)}")


def call(func, ctx: Context, **extra) -> Any:
    """Call ``func`` with the run's quick/seed/progress settings, passing only what it accepts."""
    offered = {"quick": ctx.quick, "seed": ctx.seed, "progress": ctx.progress, **extra}
    params = inspect.signature(func).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return func(**offered)
    return func(**{k: v for k, v in offered.items() if k in params})


def _fmt(x: float, pct: bool = False) -> str:
    return f"{100 * x:.1f} %" if pct else f"{x:.4g}"


# ---- 3. natural gradient ---------------------------------------------------------------------
NGD_LABELS = {"kfac": "NGD (KFAC)", "ekfac": "NGD (EKFAC)", "diag": "NGD (diagonal)", "implicit": "NGD (CG, exact F)",
              "sgd": "SGD + momentum", "adam": "Adam"}


def _ngd_row(m: str, v: dict) -> str:
    epochs = "–" if v["epochs_to_target"] is None else f"{v['epochs_to_target']:.2f}"
    secs = "–" if v["seconds_to_target"] is None else f"{v['seconds_to_target']:.2f} s"
    return (f"<tr><td>{NGD_LABELS.get(m, m)}</td><td class='num'>{v['lr']:g}</td><td class='num'>{v['final_loss']:.4f}</td>"
            f"<td class='num'>{epochs}</td><td class='num'>{secs}</td><td class='num'>{v['seconds_per_epoch']:.2f} s</td></tr>")


def natural_gradient_summary(results: dict) -> tuple[dict, str, str]:
    """Per problem: the target loss, and per method the lr used, the loss curve (median over seeds),
    final loss, epochs and seconds to the target; with the section's text and headline."""
    problems, parts, heads = {}, [], []
    for prob, r in results["problems"].items():
        summ = r["summary"]
        methods = {}
        for m, row in summ["table"].items():
            methods[m] = {
                "lr": r["chosen_lr"][m],
                "loss_curve": [float(v) for v in summ["median"][m]["loss"]],
                "final_loss": float(row["final_loss"]),
                "epochs_to_target": row["epochs_to_target"],
                "seconds_to_target": row["seconds_to_target"],
                "seconds_per_epoch": float(row["seconds_per_epoch"]),
            }
        problems[prob] = {"likelihood": r["likelihood"], "target_loss": float(summ["target"]), "methods": methods}
        rows = "".join(_ngd_row(m, v) for m, v in methods.items())
        best = min(methods, key=lambda m: methods[m]["final_loss"])
        parts.append(
            f"<p><b>{prob}</b> ({r['likelihood']} likelihood): target loss {summ['target']:.4f} (the worse of SGD's "
            f"and Adam's final losses); lowest final loss: {NGD_LABELS.get(best, best)}.</p>"
            "<table class='small'><tr><th>optimizer</th><th>lr</th><th>final loss</th><th>epochs to target</th>"
            f"<th>time to target</th><th>time per epoch</th></tr>{rows}</table>"
        )
        heads.append(f"{prob}: best {best} ({methods[best]['final_loss']:.3f})")
    text = (
        f"<p>The same models, data, batches and epochs ({results.get('epochs')} epochs, seeds "
        f"{results.get('seeds')}) for each optimizer; only the update differs. Natural gradient "
        "preconditions the gradient with the (approximate, damped) Fisher, (F + λI)⁻¹∇L, so a step is "
        "measured in KL between the model's predictions rather than in Euclidean parameter distance.</p>"
        + "".join(parts)
    )
    numbers = {"epochs": results.get("epochs"), "seeds": results.get("seeds"), "problems": problems}
    return numbers, text, "; ".join(heads)


@section("natural_gradient", "3. Natural gradient vs SGD vs Adam", order=3, aliases=("ngd", "optim"))
def natural_gradient_section(ctx: Context) -> SectionResult:
    mods = ("fisherkit.studies.ngd", "fisherkit.studies.ngd_plots")
    results = call(find(mods, "run_comparison"), ctx)
    fig = find(mods, "plot_curves")(results)
    numbers, text, headline = natural_gradient_summary(results)
    return SectionResult(title="3. Natural gradient vs SGD vs Adam", text=text, numbers=numbers,
                         figures={"optimizer_loss_curves": fig}, headline=headline)


# ---- 4. continual learning -------------------------------------------------------------------
def continual_summary(results: dict) -> tuple[dict, str, str]:
    """Per method: mean average accuracy, backward transfer and forgetting; text and headline."""
    methods = {}
    for m, r in results["methods"].items():
        methods[m] = {k: float(r["mean"][k]) for k in ("acc", "bwt", "forgetting")}
        methods[m]["strength"] = r.get("strength")
        methods[m]["final_row"] = [float(v) for v in r["R"][0][-1]]
    rows = "".join(
        f"<tr><td>{m}</td><td>{_fmt(v['acc'], True)}</td><td>{_fmt(v['forgetting'], True)}</td>"
        f"<td>{_fmt(v['bwt'], True)}</td></tr>"
        for m, v in methods.items()
    )
    n_tasks = len(results.get("tasks", [])) or len(next(iter(methods.values()))["final_row"])
    least = min(methods, key=lambda m: methods[m]["forgetting"])
    best = max(methods, key=lambda m: methods[m]["acc"])
    text = f"""
<p>A stream of {n_tasks} tasks ({results.get('stream', '')}, {results.get('scenario', '')}-incremental), learned one
after the other by the same network with the same optimizer; only the regulariser differs. Entry
R[t, j] of each accuracy matrix is the test accuracy on task j after training on task t; average
accuracy is the mean of the last row, forgetting the mean drop from each task's best accuracy.</p>
<table class="small"><tr><th>method</th><th>average accuracy</th><th>forgetting</th><th>backward transfer</th></tr>{rows}</table>
<p>Least forgetting: <b>{least}</b>; highest average accuracy: <b>{best}</b>. A penalty strong enough
to stop forgetting also slows learning of the new tasks (the diagonal of R): the balance is set by
λ, chosen once per stream (see docs/continual.md), not tuned on this run.</p>
"""
    headline = ", ".join(f"{m} ACC {_fmt(v['acc'], True)} / forg. {_fmt(v['forgetting'], True)}" for m, v in methods.items())
    return {"methods": methods, "stream": results.get("stream"), "tasks": n_tasks}, text, headline


@section("continual", "4. EWC vs fine-tuning vs L2", order=4, aliases=("ewc",))
def continual_section(ctx: Context) -> SectionResult:
    mods = ("fisherkit.studies.continual", "fisherkit.studies.continual_plots")
    results = call(find(mods, "run_stream"), ctx, methods=("finetune", "l2", "ewc"))
    fig = find(mods, "plot_accuracy_matrices")(results)
    numbers, text, headline = continual_summary(results)
    return SectionResult(title="4. EWC vs fine-tuning vs L2", text=text, numbers=numbers,
                         figures={"continual_accuracy_matrices": fig}, headline=headline)


# ---- 5. active learning ----------------------------------------------------------------------
def _finite_or_none(x):
    x = float(x)
    return x if math.isfinite(x) else None


def active_summary(results: dict) -> tuple[dict, str, str]:
    """Per strategy: the mean learning curve, labels to the target accuracy (None: never reached),
    area under the learning curve (mean accuracy over the budget), final accuracy, selection time."""
    n_labels = [int(v) for v in results["n_labels"]]
    strategies = {}
    for name, r in results["strategies"].items():
        summ = results["summary"][name]
        strategies[name] = {
            "acc_curve": [float(v) for v in np.asarray(r["acc"], float).mean(0)],
            "labels_to_target": _finite_or_none(summ["labels_to_target_mean_curve"]),
            "aulc": float(summ["aulc_mean"]),
            "final_acc": float(summ["final_acc_mean"]),
            "select_seconds": float(summ["select_seconds_mean"]),
        }
    target = float(results["target"])
    rnd = strategies.get("random", {}).get("labels_to_target")

    def row(name, v):
        ltt = "never" if v["labels_to_target"] is None else f"{v['labels_to_target']:.0f}"
        rel = ""
        if name != "random" and v["labels_to_target"] is not None and rnd:
            rel = f"{100 * (1 - v['labels_to_target'] / rnd):+.0f} %"
        return (f"<tr><td>{name}</td><td class='num'>{ltt}</td><td class='num'>{rel}</td>"
                f"<td class='num'>{v['aulc']:.3f}</td><td class='num'>{v['final_acc']:.3f}</td>"
                f"<td class='num'>{v['select_seconds']:.2f} s</td></tr>")

    rows = "".join(row(k, v) for k, v in strategies.items())
    best = max(strategies, key=lambda k: strategies[k]["aulc"])
    cfg = results.get("config", {})
    text = f"""
<p>Pool-based active learning on {results.get('dataset', '')} ({cfg.get('model', 'an MLP')}): start from
{n_labels[0]} labels, and each round retrain from scratch, then let the strategy pick the next
{n_labels[1] - n_labels[0] if len(n_labels) > 1 else 0} points to label, up to {n_labels[-1]} labels.
Expected Gradient Length (EGL) picks the points whose label, drawn from the model's own
prediction, would change the parameters most: Σ_y p(y|x) ‖∇θ ℓ(x, y)‖². "Labels to target" is where the
mean learning curve first reaches {100 * target:.0f} % test accuracy; AULC is the mean accuracy
over the labelling budget.</p>
<table class="small"><tr><th>strategy</th><th>labels to {100 * target:.0f} %</th><th>vs random</th><th>AULC</th>
<th>final accuracy</th><th>selection time / round</th></tr>{rows}</table>
<p>Highest AULC in this run: <b>{best}</b>{' (one seed: noisy; the full run averages several)' if len(cfg.get('seeds', [])) == 1 else ''}.</p>
"""
    numbers = {"dataset": results.get("dataset"), "target": target, "n_labels": n_labels, "strategies": strategies}
    headline = ", ".join(f"{k} AULC {v['aulc']:.3f}" for k, v in strategies.items())
    return numbers, text, headline


@section("active", "5. Active learning: EGL vs baselines", order=5, aliases=("active_learning", "egl"))
def active_section(ctx: Context) -> SectionResult:
    mods = ("fisherkit.studies.active", "fisherkit.studies.active_plots")
    results = call(find(mods, "run_comparison"), ctx)
    fig = find(mods, "plot_learning_curves")(results)
    numbers, text, headline = active_summary(results)
    return SectionResult(title="5. Active learning: EGL vs baselines", text=text, numbers=numbers,
                         figures={"active_learning_curves": fig}, headline=headline)
