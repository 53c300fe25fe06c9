"""Section 2 — distribution space vs parameter space.

The same step in parameters can be a tiny or a huge change in the distribution: for Gaussians
with a mean gap Δ, KL = Δ²/(2σ²) — 0.125 for σ = 2, 2.0 for σ = 0.5. The Fisher is the metric that
measures steps in distribution space: KL(θ, θ+εd) = ½ε² dᵀF d + O(ε³). On a small network we check
this with ``fk.kl_divergence`` against ``F.quadratic_form``, and that F equals −E_{y~p_θ}[∇²log p]
(the Hessian of the expected negative log-likelihood) but not the Hessian at the observed labels.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import integrate
from scipy import stats as sps
from torch import nn

from .figures import COLORS, figure
from .registry import Context, SectionResult, section

GAP = 1.0
SIGMAS = (2.0, 0.5)


def gaussian_kl(mu_a: float, mu_b: float, sigma: float) -> float:
    """KL[N(μa, σ²) ‖ N(μb, σ²)] = (μa − μb)² / (2σ²)."""
    return (mu_a - mu_b) ** 2 / (2 * sigma**2)


def numeric_kl(mu_a: float, mu_b: float, sigma: float) -> float:
    """The same KL by quadrature of ∫ p log(p/q) (an independent check of the closed form)."""
    p, q = sps.norm(mu_a, sigma), sps.norm(mu_b, sigma)
    val, _ = integrate.quad(lambda x: p.pdf(x) * (p.logpdf(x) - q.logpdf(x)), mu_a - 12 * sigma, mu_a + 12 * sigma)
    return float(val)


def plot_gaussians():
    """Two pairs of Gaussians with the same mean gap and very different KL."""
    fig, axes = figure(ncols=2, width=4.6, height=3.4)
    for ax, sigma in zip(axes, SIGMAS):
        x = np.linspace(-4 * max(sigma, 0.5) - 0.5, 4 * max(sigma, 0.5) + 1.5, 500)
        ax.plot(x, sps.norm.pdf(x, 0, sigma), color=COLORS["blue"], lw=2, label="N(0, σ²)")
        ax.plot(x, sps.norm.pdf(x, GAP, sigma), color=COLORS["orange"], lw=2, label=f"N({GAP:g}, σ²)")
        ax.fill_between(x, np.minimum(sps.norm.pdf(x, 0, sigma), sps.norm.pdf(x, GAP, sigma)), alpha=0.2,
                        color=COLORS["grey"])
        ax.set_title(f"σ = {sigma:g}: KL = {gaussian_kl(0, GAP, sigma):.3f}")
        ax.set_xlabel("x")
        ax.legend(fontsize=8)
    return fig


def small_network(seed: int, steps: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A float64 4-8-3 tanh MLP trained briefly (Adam) on standardised iris; returns (model, X, y)."""
    from ..datasets import load

    split = load("iris", seed=seed, dtype=torch.float64)
    X, y = split.X_train, split.y_train
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    return model, X, y


def flat_params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def hessians(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hessians at θ of (a) the expected NLL −(1/N)Σₙ Σ_c p_θ(c|xₙ) log p_θ'(c|xₙ) with the weights
    p_θ held fixed — its Hessian is −E_{y~p_θ}[∇² log p] — and (b) the mean NLL at the observed y."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    numels = [p.numel() for _, p in model.named_parameters()]
    theta = flat_params(model)
    with torch.no_grad():
        probs = torch.softmax(model(X), dim=1)

    def logp(t):
        params = {n: v.reshape(s) for n, v, s in zip(names, torch.split(t, numels), shapes)}
        return torch.log_softmax(torch.func.functional_call(model, params, (X,)), dim=1)

    expected = torch.func.hessian(lambda t: -(probs * logp(t)).sum(1).mean())(theta)
    observed = torch.func.hessian(lambda t: -logp(t).gather(1, y[:, None]).mean())(theta)
    return expected, observed


def kl_check(model, X, y, F, rng: np.random.Generator, eps: np.ndarray) -> dict:
    """KL(θ, θ + εd) from ``fk.kl_divergence`` vs ½ε² dᵀFd, for a random unit d and F's top eigenvector."""
    from .. import kl_divergence

    theta = flat_params(model)
    d_rand = torch.as_tensor(rng.standard_normal(theta.numel()), dtype=theta.dtype)
    d_rand = d_rand / d_rand.norm()
    _, vecs = torch.linalg.eigh(F.to_dense())
    out = {"epsilon": eps.tolist()}
    for name, d in (("random", d_rand), ("top_eigenvector", vecs[:, -1])):
        q = float(F.quadratic_form(d))
        kl = [float(kl_divergence(model, theta, theta + e * d, (X, y))) for e in eps]
        half = [0.5 * e**2 * q for e in eps]
        out[name] = {"dFd": q, "kl": kl, "half_eps2_dFd": half, "ratio": [a / b for a, b in zip(kl, half)]}
    return out


def plot_kl(check: dict):
    fig, ax = figure(width=6.0, height=4.2)
    eps = np.asarray(check["epsilon"])
    for name, color in (("random", COLORS["blue"]), ("top_eigenvector", COLORS["orange"])):
        c = check[name]
        label = "random direction" if name == "random" else "top eigenvector of F"
        ax.loglog(eps, c["kl"], "o", color=color, label=f"KL(θ, θ+εd), {label}")
        ax.loglog(eps, c["half_eps2_dFd"], "-", color=color, lw=1.5, label=f"½ε² dᵀFd, {label}")
    ax.set_xlabel("ε  (‖d‖ = 1)")
    ax.set_ylabel("mean KL over the data")
    ax.set_title("Small steps: KL ≈ ½ε² dᵀFd")
    ax.legend(fontsize=7)
    return fig


def plot_hessians(F: torch.Tensor, expected: torch.Tensor, observed: torch.Tensor):
    fig, axes = figure(ncols=2, width=4.6, height=4.0)
    f = F.reshape(-1).numpy()
    for ax, H, title, color in ((axes[0], expected, "−E_{y~p_θ}[∇² log p]", COLORS["green"]),
                                (axes[1], observed, "Hessian at the observed labels", COLORS["red"])):
        ax.scatter(f, H.reshape(-1).numpy(), s=3, alpha=0.5, color=color)
        lim = [min(f.min(), float(H.min())), max(f.max(), float(H.max()))]
        ax.plot(lim, lim, color=COLORS["grey"], lw=0.8, ls="--")
        ax.set_xlabel("Fisher entry F_ij")
        ax.set_ylabel("Hessian entry H_ij")
        ax.set_title(title, fontsize=10)
    return fig


@section("geometry", "2. Distribution space vs parameter space", order=2, aliases=("kl", "distribution"))
def geometry_section(ctx: Context) -> SectionResult:
    import fisherkit as fk

    pairs = {f"sigma_{s:g}": {"sigma": s, "gap": GAP, "kl": gaussian_kl(0, GAP, s), "kl_quadrature": numeric_kl(0, GAP, s),
                              "half_gap2_fisher": 0.5 * GAP**2 / s**2} for s in SIGMAS}
    model, X, y = small_network(ctx.torch_seed(2), steps=60 if ctx.quick else 200)
    F = fk.fisher(model, (X, y), structure="dense", kind="exact")
    eps = np.logspace(-3, 0.3, 8 if ctx.quick else 14)
    check = kl_check(model, X, y, F, ctx.rng(3), eps)
    Fd = F.to_dense()
    expected, observed = hessians(model, X, y)
    norm = float(torch.linalg.norm(Fd))
    hess = {
        "parameters": int(Fd.shape[0]),
        "samples": int(X.shape[0]),
        "rel_diff_expected_hessian": float(torch.linalg.norm(Fd - expected)) / norm,
        "rel_diff_observed_hessian": float(torch.linalg.norm(Fd - observed)) / norm,
        "min_eig_fisher": float(torch.linalg.eigvalsh(Fd)[0]),
        "min_eig_observed_hessian": float(torch.linalg.eigvalsh(observed)[0]),
    }
    r, t = check["random"], check["top_eigenvector"]
    small = 1  # second-smallest ε: well inside the quadratic regime, far above rounding
    text = f"""
<p>Both pairs of Gaussians are one unit apart in the mean, the same step in parameter space. In
distribution space they are far apart: KL = Δ²/(2σ²) = {pairs['sigma_2']['kl']:.3f} for σ = 2 and
{pairs['sigma_0.5']['kl']:.3f} for σ = 0.5 (quadrature: {pairs['sigma_2']['kl_quadrature']:.3f} and
{pairs['sigma_0.5']['kl_quadrature']:.3f}). The Fisher of the mean, 1/σ², is the metric that tells
the two apart: ½Δ²/σ² is exactly this KL.</p>
<p>The same holds for a network. On a 4-8-3 tanh MLP ({hess['parameters']} parameters, trained
briefly on iris, N = {hess['samples']}) <code>fk.kl_divergence(model, θ, θ+εd, data)</code> matches
½ε² dᵀFd from <code>fk.fisher(..., structure="dense").quadratic_form(d)</code>: at ε =
{eps[small]:.2g} the ratio is {r['ratio'][small]:.4f} along a random direction and
{t['ratio'][small]:.4f} along F's top eigenvector, where the same ε moves the distribution
{t['dFd'] / r['dFd']:.0f}× further (dᵀFd = {t['dFd']:.3g} vs {r['dFd']:.3g}). For large ε the
quadratic stops being accurate.</p>
<p>F is also the expected curvature: ‖F − (−E_{{y~p_θ}}[∇²log p])‖/‖F‖ =
{hess['rel_diff_expected_hessian']:.1e} (float64 rounding), while the Hessian at the observed
labels differs by {100 * hess['rel_diff_observed_hessian']:.1f} % and can be indefinite (smallest
eigenvalue {hess['min_eig_observed_hessian']:.2e}; the Fisher's is {hess['min_eig_fisher']:.2e} ≥ 0).</p>
"""
    return SectionResult(
        title="2. Distribution space vs parameter space",
        text=text,
        numbers={"gaussians": pairs, "kl_check": check, "fisher_vs_hessian": hess},
        figures={"gaussian_pairs": plot_gaussians(), "kl_vs_quadratic": plot_kl(check),
                 "fisher_vs_hessian": plot_hessians(Fd, expected, observed)},
        headline=(f"KL σ=2: {pairs['sigma_2']['kl']:.3f}, σ=0.5: {pairs['sigma_0.5']['kl']:.3f}; "
                  f"KL/(½ε²dᵀFd) = {r['ratio'][small]:.4f}; ‖F+E[H]‖/‖F‖ = {hess['rel_diff_expected_hessian']:.0e}"),
    )
