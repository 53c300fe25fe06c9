"""Figures and tables of the natural-gradient experiment (``studies.ngd.run_comparison``'s result).

``plot_curves(results)``: training loss vs epochs and vs wall-clock seconds, one row per problem,
median over seeds with the min–max band, the target loss dashed. ``format_table(results)``: a
Markdown table of final loss, epochs / seconds to the target and the ratios against Adam and SGD.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"kfac": "C0", "ekfac": "C1", "diag": "C2", "implicit": "C3", "sgd": "C7", "adam": "C4"}
LABELS = {"kfac": "NGD kfac", "ekfac": "NGD ekfac", "diag": "NGD diag", "implicit": "NGD implicit (CG)",
          "sgd": "SGD + momentum", "adam": "Adam"}


def plot_curves(results: dict, problems=None):
    """Training loss vs epochs (left) and vs seconds (right) per problem; returns the Figure."""
    probs = list(problems or results["problems"])
    fig, axes = plt.subplots(len(probs), 2, figsize=(11, 3.6 * len(probs)), squeeze=False)
    for row, prob in zip(axes, probs):
        p = results["problems"][prob]
        for m, runs in p["runs"].items():
            med = p["summary"]["median"][m]
            n = len(med["loss"])
            lo = [min(r["loss"][i] for r in runs) for i in range(n)]
            hi = [max(r["loss"][i] for r in runs) for i in range(n)]
            label = f"{LABELS.get(m, m)} (lr={p['chosen_lr'][m]:g})"
            row[0].plot(range(n), med["loss"], color=COLORS.get(m), label=label)
            row[0].fill_between(range(n), lo, hi, color=COLORS.get(m), alpha=0.15, linewidth=0)
            row[1].plot(med["seconds"], med["loss"], color=COLORS.get(m), label=label)
        for ax, xl in zip(row, ("epoch", "training wall-clock (s)")):
            ax.axhline(p["summary"]["target"], color="k", ls="--", lw=0.8)
            ax.set_yscale("log")
            ax.set_xlabel(xl)
            ax.set_ylabel(f"training loss ({p['likelihood']} nll)")
            ax.set_title(f"digits {prob}")
            ax.grid(alpha=0.3)
        row[1].set_xscale("symlog", linthresh=0.1)
        row[1].set_xlim(left=0)
        row[0].legend(fontsize=7, loc="upper right", framealpha=0.6)
    fig.suptitle(f"natural gradient vs SGD vs Adam — median of {len(results['seeds'])} seed(s), "
                 f"band = min–max; dashed: target loss", fontsize=10)
    fig.tight_layout()
    return fig


def _fmt(v, spec=".3g"):
    return "—" if v is None else format(v, spec)


def format_table(results: dict) -> str:
    """Markdown: per problem and method, final loss, epochs/seconds to target and the ratios."""
    lines = []
    for prob, p in results["problems"].items():
        s = p["summary"]
        lines.append(f"**{prob}** ({p['likelihood']} likelihood) — target loss {s['target']:.4g} "
                     f"(max of SGD's and Adam's final median loss)\n")
        lines.append(f"learning-rate grid picked on seed {results['seeds'][0]}; median over seeds {results['seeds']}; "
                     f"{results['epochs']} epochs\n")
        lines.append("| method | lr | final loss | epochs to target | s to target | s / epoch | "
                     "epochs ÷ Adam | s ÷ Adam | epochs ÷ SGD | s ÷ SGD |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
        for m, r in s["table"].items():
            lines.append(
                f"| {LABELS.get(m, m)} | {p['chosen_lr'][m]:g} | {r['final_loss']:.4g} | "
                f"{_fmt(r['epochs_to_target'], '.2f')} | {_fmt(r['seconds_to_target'], '.2f')} | "
                f"{r['seconds_per_epoch']:.3f} | {_fmt(r['epochs_to_target_vs_adam'], '.2f')} | "
                f"{_fmt(r['seconds_to_target_vs_adam'], '.2f')} | {_fmt(r['epochs_to_target_vs_sgd'], '.2f')} | "
                f"{_fmt(r['seconds_to_target_vs_sgd'], '.2f')} |")
        lines.append("")
    return "\n".join(lines)


def format_diagnostics(results: dict) -> str:
    """Markdown: cos(∇L, natural gradient), predicted vs measured KL per step, and Adam vs Fisher."""
    lines = ["| problem | method | mean cos(g, F̂⁻¹g) | mean ½ΔᵀF̂Δ | mean measured KL | max measured KL |",
             "|---|---|---|---|---|---|"]
    for prob, p in results["problems"].items():
        for m, d in p.get("ngd_diagnostics", {}).items():
            lines.append(f"| {prob} | {LABELS.get(m, m)} | {d['cos_angle_mean']:.3f} | {d['kl_model_mean']:.2e} | "
                         f"{d['kl_measured_mean']:.2e} | {d['kl_measured_max']:.2e} |")
    lines += ["", "| problem | Adam v against | Pearson | Pearson (log) | Spearman | median v / reference |",
              "|---|---|---|---|---|---|"]
    for prob, p in results["problems"].items():
        c = p.get("adam_fisher_correlation")
        if not c:
            continue
        for k in ("empirical_fisher", "true_fisher", "squared_mean_gradient"):
            lines.append(f"| {prob} | {k.replace('_', ' ')} | {c[k]['pearson']:.3f} | {c[k]['pearson_log']:.3f} | "
                         f"{c[k]['spearman']:.3f} | {c[k]['median_ratio']:.3g} |")
        e = c["empirical_vs_true"]
        lines.append(f"| {prob} | (empirical vs true Fisher diag) | {e['pearson']:.3f} | — | {e['spearman']:.3f} | — |")
    return "\n".join(lines)
