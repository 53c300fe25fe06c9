"""fisherkit.laplace against laplace-torch: agreement, speed, memory (issue 15).

Runs both libraries on the same model and data, in the same process; needs laplace-torch, so run
it from a separate venv (see docs/laplace.md):

    .venv-laplace/bin/python benchmarks/bench_laplace.py            # all parts
    .venv-laplace/bin/python benchmarks/bench_laplace.py --quick    # fewer repeats

1. Agreement (float64, digits, MLP 64-32-10 with and without biases): posterior precision (diag:
   the vector; kron/full: the dense matrix), log marginal likelihood, log det of the posterior
   precision and probit predictive probabilities on the test set; max relative difference.
2. Speed (float32, digits, MLP 64-128-128-10): fit + prior tuning by marginal likelihood (Adam,
   100 steps, both) + probit predictive on the 450 test points; best of ``repeats`` runs, ratio
   fisherkit / laplace-torch.
3. Memory: last-layer KFAC Laplace of a 512-512-1000 MLP (1,000 classes, 512 points): peak RSS of a
   fresh process for fit + predictive, each library alone.

Writes benchmarks/results/bench_laplace.json and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

OUT = Path(__file__).parent / "results" / "bench_laplace.json"


def digits(dtype):
    import fisherkit as fk

    s = fk.datasets.load("digits", seed=0, standardize="unit", dtype=dtype)
    return s.X_train, s.y_train, s.X_test, s.y_test


def mlp(sizes, bias=True, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b, bias=bias), nn.ReLU()]
    return nn.Sequential(*layers[:-1]).to(dtype)


def train(model, X, y, epochs=200, wd=1e-4, seed=0):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=wd)
    for _ in range(epochs):
        perm = torch.randperm(len(X), generator=g)
        for i in range(0, len(X), 128):
            idx = perm[i : i + 128]
            opt.zero_grad()
            nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def rel(a, b):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def agreement():
    from laplace import Laplace as LT

    from fisherkit.laplace import Laplace

    Xtr, ytr, Xte, yte = digits(torch.float64)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(Xtr, ytr), batch_size=256)
    rows = []
    for bias in (False, True):
        model = train(mlp([64, 32, 10], bias=bias), Xtr, ytr, epochs=40)
        for hs, st in (("diag", "diag"), ("kron", "kfac"), ("full", "dense")):
            for sub in ("all", "last_layer"):
                lt = LT(model, "classification", subset_of_weights=sub, hessian_structure=hs, prior_precision=0.5)
                lt.fit(loader)
                la = Laplace(model, "categorical", subset=sub, structure=st, prior_precision=0.5, batch_size=256).fit((Xtr, ytr))
                if hs == "diag":
                    prec = rel(la.precision_matrix().diagonal(), lt.posterior_precision)
                elif hs == "kron":
                    prec = rel(la.precision_matrix(), lt.posterior_precision.to_matrix())
                else:
                    prec = rel(la.precision_matrix(), lt.posterior_precision)
                p_lt = lt(Xte, pred_type="glm", link_approx="probit")
                p_fk = la.predictive(Xte, method="probit")
                row = {"bias": bias, "structure": hs, "subset": sub, "P": la.n_params,
                       "precision": prec,
                       "log_marglik": rel(la.log_marginal_likelihood(), lt.log_marginal_likelihood()),
                       "logdet": rel(la.log_det_posterior_precision(), lt.log_det_posterior_precision),
                       "probit": float(((p_fk - p_lt).abs() / p_lt).max()),
                       "lml_fisherkit": float(la.log_marginal_likelihood()),
                       "lml_laplace_torch": float(lt.log_marginal_likelihood())}
                if hs == "full" and sub == "last_layer":  # both against brute-force float64 Jacobians
                    ref = _brute_ggn_last_layer(model, Xtr) + 0.5 * torch.eye(la.n_params, dtype=torch.float64)
                    row["fisherkit_vs_brute"] = rel(la.precision_matrix(), ref)
                    row["laplace_torch_vs_brute"] = rel(lt.posterior_precision.detach(), ref)
                    print(f"   full last-layer precision vs brute force: fisherkit {row['fisherkit_vs_brute']:.1e}, "
                          f"laplace-torch {row['laplace_torch_vs_brute']:.1e}")
                rows.append(row)
                print(f"bias={bias!s:5} {hs:4} {sub:10} P={row['P']:5d}  precision {prec:.1e}  log marglik "
                      f"{row['log_marglik']:.1e}  logdet {row['logdet']:.1e}  probit {row['probit']:.1e}", flush=True)
    return rows


def _brute_ggn_last_layer(model, X):
    """Σₙ Jₙᵀ Λₙ Jₙ of the last Linear by hand: J = I_C ⊗ [φ, 1] (φ the input of the last layer)."""
    with torch.no_grad():
        phi = model[:-1](X)
        p = torch.softmax(model(X), -1)
    if model[-1].bias is not None:
        phi = torch.cat([phi, torch.ones_like(phi[:, :1])], 1)
    lam = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    C, I = p.shape[1], phi.shape[1]
    H = torch.einsum("ncd,ni,nj->cidj", lam, phi, phi).reshape(C * I, C * I)  # matrix layout [W | b], row-major
    grid = torch.arange(C * I).reshape(C, I)
    perm = torch.cat([grid[:, :-1].reshape(-1), grid[:, -1]]) if model[-1].bias is not None else grid.reshape(-1)
    return H[perm][:, perm]  # parameter order: weight (row-major), then bias


def _time(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def speed(repeats):
    from laplace import Laplace as LT

    from fisherkit.laplace import Laplace

    torch.set_num_threads(1)
    Xtr, ytr, Xte, yte = digits(torch.float32)
    model = train(mlp([64, 128, 128, 10], dtype=torch.float32), Xtr, ytr, epochs=40)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(Xtr, ytr), batch_size=256)
    rows = []
    for hs, st in (("kron", "kfac"), ("diag", "diag")):
        for sub in ("last_layer", "all"):
            def run_lt():
                lt = LT(model, "classification", subset_of_weights=sub, hessian_structure=hs)
                lt.fit(loader)
                lt.optimize_prior_precision(method="marglik", n_steps=100, lr=0.1)
                lt(Xte, pred_type="glm", link_approx="probit")

            def run_fk():
                la = Laplace(model, "categorical", subset=sub, structure=st, batch_size=256).fit((Xtr, ytr))
                la.optimize_prior_precision("marglik", n_steps=100, lr=0.1)
                la.predictive(Xte, method="probit")

            t_fk, t_lt = [], []
            for _ in range(repeats):  # interleaved: the machine is shared
                t_fk.append(_time(run_fk, 1))
                t_lt.append(_time(run_lt, 1))
            row = {"structure": hs, "subset": sub, "fisherkit_s": min(t_fk), "laplace_torch_s": min(t_lt),
                   "ratio": min(t_fk) / min(t_lt)}
            rows.append(row)
            print(f"{hs:4} {sub:10} fisherkit {row['fisherkit_s']:.3f} s  laplace-torch {row['laplace_torch_s']:.3f} s  "
                  f"ratio {row['ratio']:.2f}", flush=True)
    return rows


def memory_child(lib):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 1000)).eval()
    X = torch.randn(512, 512)
    y = torch.randint(0, 1000, (512,))
    def rss():  # peak resident memory of this process so far, MiB (VmHWM: unlike ru_maxrss, not inherited over fork+exec)
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row = {"lib": lib, "start_mib": rss()}
    t = time.perf_counter()
    if lib == "fisherkit":
        from fisherkit.laplace import Laplace

        la = Laplace(model, "categorical", subset="last_layer", structure="kfac", batch_size=64).fit((X, y))
        predict = lambda: la.predictive(X[:128], method="probit")  # noqa: E731
    else:
        from laplace import Laplace as LT

        la = LT(model, "classification", subset_of_weights="last_layer", hessian_structure="kron")
        la.fit(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=64))
        predict = lambda: la(X[:128], pred_type="glm", link_approx="probit")  # noqa: E731
    row.update(fit_seconds=time.perf_counter() - t, after_fit_mib=rss())
    t = time.perf_counter()
    try:
        predict()
        row.update(predict_seconds=time.perf_counter() - t, after_predict_mib=rss())
    except RuntimeError as e:  # e.g. the allocator refusing a per-sample Jacobian of the last layer
        row.update(predict_error=str(e).splitlines()[0][:300])
    print(json.dumps(row))


def memory():
    rows = []
    for lib in ("fisherkit", "laplace_torch"):
        try:
            out = subprocess.run([sys.executable, __file__, "--memory-child", lib], capture_output=True, text=True,
                                 timeout=1200)
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
            row = json.loads(line[-1]) if line else {"lib": lib, "error": out.stderr[-500:]}
        except subprocess.TimeoutExpired:
            row = {"lib": lib, "error": "timeout (20 min)"}
        rows.append(row)
        print(row, flush=True)
    return rows


def plot(res, path):
    """Agreement (max relative difference per quantity) and time per configuration, one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    rows = res.get("agreement", [])
    labels = [f"{r['structure']} {'LL' if r['subset'] == 'last_layer' else 'all'}{' +b' if r['bias'] else ''}" for r in rows]
    qs = ("precision", "log_marglik", "probit")
    for j, q in enumerate(qs):
        axes[0].bar([i + 0.27 * (j - 1) for i in range(len(rows))], [max(r[q], 1e-17) for r in rows], width=0.27, label=q)
    axes[0].axhline(1e-6, color="k", lw=0.8, ls="--")
    axes[0].set_yscale("log")
    axes[0].set_xticks(range(len(rows)), labels, rotation=60, fontsize=7)
    axes[0].set_ylabel("max relative difference")
    axes[0].set_title("fisherkit vs laplace-torch (float64; dashed: 1e-6)", fontsize=9)
    axes[0].legend(fontsize=7)
    sp = res.get("speed", [])
    lab = [f"{r['structure']} {r['subset']}" for r in sp]
    axes[1].bar([i - 0.2 for i in range(len(sp))], [r["fisherkit_s"] for r in sp], width=0.4, label="fisherkit")
    axes[1].bar([i + 0.2 for i in range(len(sp))], [r["laplace_torch_s"] for r in sp], width=0.4, label="laplace-torch")
    axes[1].set_yscale("log")
    axes[1].set_xticks(range(len(sp)), lab, fontsize=8)
    axes[1].set_ylabel("seconds (fit + marglik 100 steps + predictive)")
    axes[1].set_title("time, digits MLP 64-128-128-10, 1 thread", fontsize=9)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--memory-child")
    ap.add_argument("--parts", default="agreement,speed,memory")
    ap.add_argument("--plot", help="only draw the figure from the saved JSON to this PNG path")
    a = ap.parse_args()
    if a.memory_child:
        memory_child(a.memory_child)
        return
    if a.plot:
        plot(json.loads(OUT.read_text()), a.plot)
        return
    import laplace

    res = {"machine": platform.platform(), "torch": torch.__version__,
           "laplace_torch": getattr(laplace, "__version__", "0.3"), "threads": 1}
    if OUT.exists():
        res = {**json.loads(OUT.read_text()), **res}
    parts = a.parts.split(",")
    if "agreement" in parts:
        res["agreement"] = agreement()
    if "speed" in parts:
        res["speed"] = speed(2 if a.quick else 3)
    if "memory" in parts:
        res["memory"] = memory()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(res, indent=1))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
