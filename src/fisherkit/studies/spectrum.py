"""How well each structure approximates the dense Fisher: relative errors, spectra, a small study."""

from __future__ import annotations

import torch


def relative_errors(dense, others: dict) -> dict[str, float]:
    """‖F_s − F‖_F / ‖F‖_F for each approximation F_s against the dense Fisher F."""
    ref = dense.to_dense()
    norm = ref.norm()
    return {name: float((f.to_dense() - ref).norm() / norm) for name, f in others.items()}


def digits_study(hidden: int = 32, epochs: int = 60, seed: int = 0, kind: str = "exact",
                 structures=("diag", "block", "kfac", "ekfac"), top: int = 10, progress: bool = False) -> dict:
    """Train a 64-hidden-10 MLP on digits (full-batch Adam), then compare structures with the dense Fisher.

    Returns trace, top eigenvalues, the whole spectrum and each structure's relative Frobenius error.
    """
    from .. import api
    from ..datasets import load

    torch.manual_seed(seed)
    split = load("digits", seed=seed)
    net = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(epochs):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(split.X_train), split.y_train).backward()
        opt.step()
    with torch.no_grad():
        acc = float((net(split.X_test).argmax(1) == split.y_test).float().mean())
    data = (split.X_train, split.y_train)
    dense = api.fisher(net, data, kind=kind, structure="dense", progress=progress)
    approx = {s: api.fisher(net, data, kind=kind, structure=s, progress=progress) for s in structures}
    spectrum = torch.linalg.eigvalsh(dense.to_dense()).flip(0)
    return {
        "parameters": dense.info.size,
        "samples": dense.num_samples,
        "test_accuracy": acc,
        "trace": float(dense.trace()),
        "top_eigenvalues": [float(v) for v in spectrum[:top]],
        "spectrum": [float(v) for v in spectrum],
        "relative_error": relative_errors(dense, approx),
        "kind": kind,
    }


def plot_spectrum(result: dict):
    """Eigenvalues of the dense Fisher on a log scale (a Figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vals = torch.tensor(result["spectrum"]).clamp_min(1e-16)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.semilogy(range(1, len(vals) + 1), vals.numpy())
    ax.set_xlabel("eigenvalue index")
    ax.set_ylabel("eigenvalue of F")
    ax.set_title(f"Fisher spectrum ({result['parameters']} parameters, trace {result['trace']:.3g})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
