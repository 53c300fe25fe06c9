"""Learning-curve figures (matplotlib, Agg backend): mean accuracy ± one std over seeds per strategy."""

from __future__ import annotations

import numpy as np


def plot_learning_curves(results: dict, ax=None, title: str | None = None):
    """Test accuracy against labels for each strategy, shaded ± std over seeds; returns the Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
    else:
        fig = ax.figure
    n = np.asarray(results["n_labels"])
    for name, r in results["strategies"].items():
        acc = np.asarray(r["acc"], float)
        mu = acc.mean(0)
        style = "--" if name == "random" else "-"
        (line,) = ax.plot(n, mu, style, label=name, lw=1.6)
        if acc.shape[0] > 1:
            sd = acc.std(0, ddof=1)
            ax.fill_between(n, mu - sd, mu + sd, color=line.get_color(), alpha=0.15)
    if "target" in results:
        ax.axhline(results["target"], color="grey", lw=0.8, ls=":")
    seeds = len(results["config"]["seeds"])
    ax.set_xlabel("labelled points")
    ax.set_ylabel("test accuracy")
    ax.set_title(title or f"{results.get('dataset', '')}: {results['config'].get('model', '')}, {seeds} seed(s), ±1 std")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_bar(summary: dict, key: str = "aulc", ax=None, title: str = ""):
    """Bar chart of a summary metric (``aulc`` or ``ltt``) with ± std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(6.4, 3.4))
    else:
        fig = ax.figure
    names = list(summary)
    mu = [summary[k][f"{key}_mean"] for k in names]
    sd = [summary[k][f"{key}_std"] for k in names]
    ax.bar(names, mu, yerr=sd, capsize=3, color="tab:blue", alpha=0.7)
    ax.set_ylabel(key)
    if key == "aulc":
        lo = min(m - s for m, s in zip(mu, sd))
        ax.set_ylim(max(0, lo - 0.02), min(1, max(m + s for m, s in zip(mu, sd)) + 0.01))
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig
