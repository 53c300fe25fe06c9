"""Figures for continual-learning runs (matplotlib, Agg); each function returns a Figure.

Inputs are the dicts returned by ``studies.continual.run_stream`` / ``lambda_sweep``.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..continual import metrics  # noqa: E402


def _mean_R(res) -> np.ndarray:
    return np.mean(np.array(res["R"], dtype=float), axis=0)


def plot_accuracy_matrices(results: dict, methods=None):
    """Heatmaps of the seed-averaged accuracy matrix R[i][j] (row: after task i; column: task j)."""
    methods = list(methods or results["methods"])
    fig, axes = plt.subplots(1, len(methods), figsize=(3.1 * len(methods), 3.3), squeeze=False)
    for ax, m in zip(axes[0], methods):
        R = 100 * _mean_R(results["methods"][m])
        T = R.shape[0]
        im = ax.imshow(np.ma.masked_invalid(R), vmin=0, vmax=100, cmap="viridis")
        ax.set_title(f"{m}\nACC {100 * results['methods'][m]['mean']['acc']:.1f}%", fontsize=9)
        ax.set_xlabel("evaluated on task j", fontsize=8)
        ax.set_ylabel("after training task i", fontsize=8)
        ax.set_xticks(range(T))
        ax.set_yticks(range(T))
        ax.tick_params(labelsize=7)
        if T <= 6:
            for i in range(T):
                for j in range(i + 1):
                    ax.text(j, i, f"{R[i, j]:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if R[i, j] < 60 else "black")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="test accuracy (%)")
    fig.suptitle(f"{results['stream']}: accuracy matrix R[i][j] (mean over {len(results['config']['seeds'])} seeds)",
                 fontsize=10)
    return fig


def plot_task_curves(results: dict, methods=None):
    """Per-task test accuracy as training proceeds (one panel per method; mean over seeds), plus
    the average accuracy over the tasks seen so far (black)."""
    methods = list(methods or results["methods"])
    fig, axes = plt.subplots(1, len(methods), figsize=(3.1 * len(methods), 3.0), sharey=True, squeeze=False)
    for ax, m in zip(axes[0], methods):
        R = 100 * _mean_R(results["methods"][m])
        T = R.shape[0]
        cmap = plt.get_cmap("viridis")
        for j in range(T):
            ax.plot(range(j, T), R[j:, j], color=cmap(j / max(T - 1, 1)), lw=1.2, marker=".", ms=3)
        ax.plot(range(T), 100 * metrics.average_accuracy_curve(R / 100), color="black", lw=2, label="average")
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("after training task", fontsize=8)
        ax.set_ylim(0, 102)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{results['stream']}: accuracy of each task over time (colour = task)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_lambda_sweep(sweep: dict, metric: str = "acc", reference: dict | None = None):
    """Average accuracy (or forgetting) against λ for each method, mean ± std over seeds.

    ``reference``: optional {label: value (fraction)} drawn as horizontal lines (e.g. fine-tuning).
    """
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for m, runs in sweep["methods"].items():
        lams = sorted(runs, key=float)
        mean = np.array([100 * runs[l]["mean"][metric] for l in lams])
        std = np.array([100 * runs[l]["std"][metric] for l in lams])
        x = np.array([float(l) for l in lams])
        ax.plot(x, mean, marker="o", ms=4, label=m)
        ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    ax.set_xscale("log")
    for label, v in (reference or {}).items():
        ax.axhline(100 * v, ls="--", color="grey", lw=1)
        ax.text(ax.get_xlim()[0], 100 * v, f" {label}", va="bottom", fontsize=7, color="grey")
    ax.set_xlabel("λ")
    ax.set_ylabel({"acc": "average accuracy (%)", "forgetting": "forgetting (%)", "bwt": "BWT (%)"}[metric])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{sweep['stream']}: λ sensitivity", fontsize=10)
    fig.tight_layout()
    return fig
