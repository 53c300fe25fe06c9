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
4. ``--parts ablation`` (fisherkit only, no laplace-torch needed): what moves the calibration of the
   digits study (docs/laplace.md, "What closes the gap"): the predictive (probit, centred probit,
   MC), the prior (marglik scalar / layerwise, validation NLL, weight decay × N), the Fisher (GGN vs
   empirical), last layer vs all layers, an early-stopped MAP and a MAP with 10× the weight decay;
   plus the in-distribution headroom (the clean-test temperature that minimises the MAP's NLL, and
   the clean NLL over a sweep of P). 80 % of the training digits train, 20 % validate; writes
   benchmarks/results/bench_laplace_ablation.json.

        python benchmarks/bench_laplace.py --parts ablation --models mlp --seeds 0,1,2,3,4

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
ABLATION_OUT = Path(__file__).parent / "results" / "bench_laplace_ablation.json"


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


# ---- 4. calibration ablation (fisherkit only) ---------------------------------------------------
def ablation_seed(model_name: str, seed: int, progress=print) -> dict:
    """One seed of the ablation: every row's metrics on clean / rotated / noise digits."""
    import math
    import statistics

    from fisherkit.laplace import Laplace, metrics
    from fisherkit.studies import laplace as st
    from fisherkit.studies.training import train_classifier

    torch.set_num_threads(1)
    Xtr, ytr, tests, noise = st._splits(seed, (0, 15, 30, 45, 60))
    perm = torch.randperm(len(Xtr), generator=torch.Generator().manual_seed(2000 + seed))
    nv = len(Xtr) // 5
    Xv, yv, Xt, yt = Xtr[perm[:nv]], ytr[perm[:nv]], Xtr[perm[nv:]], ytr[perm[nv:]]

    def train_tracked(wd, epochs=60):  # the study's Adam loop, keeping the epoch of least validation NLL too
        m = st.make_model(model_name, 100 * seed).train()
        best = [math.inf, None, 0]

        def validate(m, opt, ep):
            m.eval()
            with torch.no_grad():
                v = float(nn.functional.cross_entropy(m(Xv), yv))
            if v < best[0]:
                best[:] = [v, {k: t.clone() for k, t in m.state_dict().items()}, ep + 1]

        train_classifier(m, Xt, yt, epochs, lr=1e-3, batch=64, seed=100 * seed, weight_decay=wd, on_epoch=validate)
        es = st.make_model(model_name, 100 * seed)
        es.load_state_dict(best[1])
        return m.eval(), es.eval(), best[2]

    res = {}

    def ev(name, fn, extra=None):
        r = {}
        with torch.no_grad():
            pc = fn(tests["clean"][0])
            for k, (X, y) in tests.items():
                r[k] = metrics.summary(pc if k == "clean" else fn(X), y)
            r["shift_ece"] = statistics.fmean(r[k]["ece"] for k in tests if k != "clean")
            r["shift_nll"] = statistics.fmean(r[k]["nll"] for k in tests if k != "clean")
            r["ood_noise"] = metrics.ood_auroc(pc, fn(noise))
        r.update(extra or {})
        res[name] = r
        progress(f"{model_name} seed {seed} {name:34} clean NLL {r['clean']['nll']:.3f} ECE {100 * r['clean']['ece']:.1f} "
                 f"| shift ECE {100 * r['shift_ece']:.1f} | NLL " + " ".join(f"{r[k]['nll']:.3f}" for k in tests))

    m, es, es_epoch = train_tracked(5e-4)
    ev("map", lambda X: torch.softmax(m(X), -1))
    with torch.no_grad():  # headroom: the temperature minimising the MAP's NLL (a diagnostic on test, not a method)
        Ts = torch.logspace(-0.5, 0.5, 81)
        for name, (X, y) in (("oracle_T_clean", tests["clean"]), ("val_T", (Xv, yv))):
            f = m(X)
            nl = torch.stack([nn.functional.cross_entropy(f / T, y) for T in Ts])
            res[name] = {"T": float(Ts[nl.argmin()]), "nll": float(nl.min())}
    la = Laplace(m, "categorical", subset="all", structure="kfac", batch_size=256).fit((Xt, yt))
    la.optimize_prior_precision("marglik", n_steps=200)
    P_ml = la.prior_precision.clone()
    ev("kfac ml-scalar probit", lambda X: la.predictive(X, "probit"), {"P": float(P_ml)})
    ev("kfac ml-scalar centred", lambda X: la.predictive(X, "probit_centred"))
    ev("kfac ml-scalar mc1000", lambda X: la.predictive(X, "mc", n_samples=1000))
    sweep = []  # does any P beat the MAP on clean / 15° digits?
    for k in (1, 3, 10, 30, 100, 1000, 1e4):
        la.prior_precision = P_ml * k
        with torch.no_grad():
            pcl = la.predictive(tests["clean"][0], "probit_centred")
            p15 = la.predictive(tests["rot15"][0], "probit_centred")
        sweep.append((float(P_ml * k), metrics.nll(pcl, tests["clean"][1]), metrics.nll(p15, tests["rot15"][1])))
    res["sweep_centred"] = sweep
    la.prior_precision = torch.tensor(1.0)
    la.optimize_prior_precision("marglik", n_steps=200, prior_structure="layerwise")
    ev("kfac ml-layerwise centred", lambda X: la.predictive(X, "probit_centred"), {"P": la.prior_precision.tolist()})
    ev("kfac ml-layerwise probit", lambda X: la.predictive(X, "probit"))
    la.prior_precision = torch.tensor(5e-4 * len(Xt))
    ev("kfac prior=wd*N centred", lambda X: la.predictive(X, "probit_centred"))
    la.optimize_prior_precision("cv", val_data=(Xv, yv), grid=torch.logspace(-2, 4, 25), predictive="probit_centred")
    ev("kfac cv centred", lambda X: la.predictive(X, "probit_centred"), {"P": float(la.prior_precision)})
    for structure in ("diag", "ekfac"):
        lao = Laplace(m, "categorical", subset="all", structure=structure, batch_size=256).fit((Xt, yt))
        lao.optimize_prior_precision("marglik", n_steps=200)
        ev(f"{structure} ml-scalar centred", lambda X: lao.predictive(X, "probit_centred"), {"P": float(lao.prior_precision)})
    lae = Laplace(m, "categorical", subset="all", structure="kfac", kind="empirical", batch_size=256).fit((Xt, yt))
    lae.optimize_prior_precision("marglik", n_steps=200)
    ev("kfac EMPIRICAL ml-scalar centred", lambda X: lae.predictive(X, "probit_centred"), {"P": float(lae.prior_precision)})
    ll = Laplace(m, "categorical", subset="last_layer", structure="kfac", batch_size=256).fit((Xt, yt))
    ll.optimize_prior_precision("marglik", n_steps=200)
    ev("ll-kfac ml-scalar probit", lambda X: ll.predictive(X, "probit"), {"P": float(ll.prior_precision)})
    ev("ll-kfac ml-scalar centred", lambda X: ll.predictive(X, "probit_centred"))
    ev("map early-stopped", lambda X: torch.softmax(es(X), -1), {"epoch": es_epoch})
    las = Laplace(es, "categorical", subset="all", structure="kfac", batch_size=256).fit((Xt, yt))
    las.optimize_prior_precision("marglik", n_steps=200)
    ev("kfac on ES map, ml centred", lambda X: las.predictive(X, "probit_centred"))
    m2, _, _ = train_tracked(5e-3)
    with torch.no_grad():
        val2 = float(nn.functional.cross_entropy(m2(Xv), yv))
    ev("map wd5e-3", lambda X: torch.softmax(m2(X), -1), {"val_nll": val2})
    la2 = Laplace(m2, "categorical", subset="all", structure="kfac", batch_size=256).fit((Xt, yt))
    la2.optimize_prior_precision("marglik", n_steps=200)
    ev("kfac on wd5e-3 map, ml centred", lambda X: la2.predictive(X, "probit_centred"))
    # the weight decay chosen by the evidence during training (online marglik, Immer et al. 2021): Adam's
    # coupled L2 term wd·θ on the mean loss is the prior precision N·wd; re-estimated every 10 epochs
    wd_hist = []

    def reestimate(mo, opt, ep):
        if (ep + 1) % 10 == 0 and ep + 1 < 60:
            mo.eval()
            lo = Laplace(mo, "categorical", subset="all", structure="kfac", batch_size=256).fit((Xt, yt))
            lo.optimize_prior_precision("marglik", n_steps=100)
            wd_hist.append(float(lo.prior_precision) / len(Xt))
            for group in opt.param_groups:
                group["weight_decay"] = wd_hist[-1]

    mo = train_classifier(st.make_model(model_name, 100 * seed).train(), Xt, yt, 60, lr=1e-3, batch=64, seed=100 * seed,
                          weight_decay=5e-4, on_epoch=reestimate)
    mo.eval()
    with torch.no_grad():
        val_o = float(nn.functional.cross_entropy(mo(Xv), yv))
    ev("map online-marglik", lambda X: torch.softmax(mo(X), -1), {"val_nll": val_o, "weight_decay": wd_hist})
    lo = Laplace(mo, "categorical", subset="all", structure="kfac", batch_size=256).fit((Xt, yt))
    lo.optimize_prior_precision("marglik", n_steps=200)
    ev("kfac on online-marglik map, centred", lambda X: lo.predictive(X, "probit_centred"))
    with torch.no_grad():
        res["map_val_nll"] = float(nn.functional.cross_entropy(m(Xv), yv))
        # under-confidence on the training points themselves: the Gaussian around a confident MAP
        la.prior_precision = P_ml
        res["train_nll"] = {"map": metrics.nll(torch.softmax(m(Xt), -1), yt),
                            "kfac ml-scalar centred": metrics.nll(la.predictive(Xt, "probit_centred"), yt),
                            "kfac ml-scalar mc1000": metrics.nll(la.predictive(Xt, "mc", n_samples=1000), yt)}
    return res


def ablation_table(res: dict) -> str:
    """Markdown: per model, mean ± std over seeds of each row (shift ECE relative to the MAP's per seed)."""
    import statistics

    def ms(xs):
        return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)

    out = []
    for model, by_seed in res.items():
        seeds = sorted(by_seed, key=int)
        rows = [k for k, v in by_seed[seeds[0]].items() if isinstance(v, dict) and "clean" in v]
        out.append(f"**{model.upper()}** ({len(seeds)} seeds)\n")
        out.append("| variant | acc clean | NLL clean | ECE clean | NLL 15° | ECE shift | ECE shift / MAP's | AUROC noise |")
        out.append("|---|---|---|---|---|---|---|---|")
        for r in rows:
            def g(f, pct=False, nd=3):
                mu, sd = ms([f(by_seed[s][r]) for s in seeds])
                k = 100 if pct else 1
                return f"{k * mu:.{1 if pct else nd}f} ± {k * sd:.{1 if pct else nd}f}"
            mu, sd = ms([by_seed[s][r]["shift_ece"] / by_seed[s]["map"]["shift_ece"] for s in seeds])
            ratio = f"{mu:.2f} ± {sd:.2f}"
            out.append(f"| {r} | {g(lambda x: x['clean']['accuracy'], True)} | {g(lambda x: x['clean']['nll'])} | "
                       f"{g(lambda x: x['clean']['ece'], True)} | {g(lambda x: x['rot15']['nll'])} | "
                       f"{g(lambda x: x['shift_ece'], True)} | {ratio} | {g(lambda x: x['ood_noise'])} |")
        out.append("")
        out.append("| seed | MAP clean NLL | best temperature on clean test (NLL) | least clean NLL over the P sweep "
                   "| MAP 15° NLL | least 15° NLL over the sweep | train NLL: MAP / LA centred / LA MC |")
        out.append("|---|---|---|---|---|---|---|")
        for s in seeds:
            d = by_seed[s]
            tr = d.get("train_nll")
            trs = " / ".join(f"{v:.3f}" for v in tr.values()) if tr else "–"
            out.append(f"| {s} | {d['map']['clean']['nll']:.4f} | {d['oracle_T_clean']['T']:.2f} ({d['oracle_T_clean']['nll']:.4f}) "
                       f"| {min(x[1] for x in d['sweep_centred']):.4f} | {d['map']['rot15']['nll']:.4f} "
                       f"| {min(x[2] for x in d['sweep_centred']):.4f} | {trs} |")
        out.append("")
    return "\n".join(out)


def ablation(models, seeds) -> dict:
    res = json.loads(ABLATION_OUT.read_text()) if ABLATION_OUT.exists() else {}
    for model in models:
        for seed in seeds:
            res.setdefault(model, {})[str(seed)] = ablation_seed(model, seed, progress=lambda s: print(s, flush=True))
            ABLATION_OUT.parent.mkdir(parents=True, exist_ok=True)
            ABLATION_OUT.write_text(json.dumps(res, indent=1))
    return res


TRADEOFF_OUT = Path(__file__).parent / "results" / "bench_laplace_tradeoff.json"


def tradeoff(model_name: str, seeds, factors=(0.1, 0.3, 1, 3, 10, 30, 100, 300, 1000, 1e4)) -> dict:
    """Clean NLL against shift ECE (mean over 15–60°) for a sweep of the scalar prior precision P
    around the evidence's choice, all-layer KFAC, plain and centred probit: is there any P that meets
    both targets (clean NLL below the MAP's, shift ECE below half the MAP's)? Full training digits."""
    import statistics

    from fisherkit.laplace import Laplace, metrics
    from fisherkit.studies import laplace as st

    torch.set_num_threads(1)
    out = {"model": model_name, "seeds": list(seeds), "factors": list(factors), "per_seed": []}
    for seed in seeds:
        Xtr, ytr, tests, _ = st._splits(seed, (0, 15, 30, 45, 60))
        m = st.train(st.make_model(model_name, 100 * seed), Xtr, ytr, 60, seed=100 * seed)
        with torch.no_grad():
            mp = {k: metrics.summary(torch.softmax(m(X), -1), y) for k, (X, y) in tests.items()}
        la = Laplace(m, "categorical", subset="all", structure="kfac", batch_size=256).fit((Xtr, ytr))
        la.optimize_prior_precision("marglik", n_steps=200)
        P_ml = float(la.prior_precision)
        row = {"seed": seed, "P_marglik": P_ml, "map": {"clean_nll": mp["clean"]["nll"],
               "shift_ece": statistics.fmean(mp[k]["ece"] for k in tests if k != "clean")}, "sweep": {}}
        # how much of the logits' variance is their common shift (invisible to the softmax), clean test set
        row["common_shift_fraction"] = {}
        ll = Laplace(m, "categorical", subset="last_layer", structure="kfac", batch_size=256).fit((Xtr, ytr))
        ll.optimize_prior_precision("marglik", n_steps=200)
        for name, post in (("all layers", la), ("last layer", ll)):
            with torch.no_grad():
                _, v = post.functional_variance(tests["clean"][0], diagonal=True)
                _, vc = post.functional_variance(tests["clean"][0], diagonal=True, centred=True)
            row["common_shift_fraction"][name] = float(1 - vc.sum() / v.sum())
        for link in ("probit", "probit_centred"):
            pts = []
            for f in factors:
                P = torch.tensor(P_ml * f)
                with torch.no_grad():
                    r = {}
                    for k, (X, y) in tests.items():
                        fm, v = la.functional_variance(X, prior_precision=P, diagonal=True, centred=link == "probit_centred")
                        from fisherkit.laplace.predictive import probit
                        r[k] = metrics.summary(probit(fm, v, "categorical"), y)
                pts.append({"P": P_ml * f, "clean_nll": r["clean"]["nll"], "clean_acc": r["clean"]["accuracy"],
                            "shift_ece": statistics.fmean(r[k]["ece"] for k in tests if k != "clean"),
                            "nll": {k: r[k]["nll"] for k in tests}})
            row["sweep"][link] = pts
        out["per_seed"].append(row)
        print(f"tradeoff {model_name} seed {seed}: P_marglik {P_ml:.2f}", flush=True)
    return out


def plot_tradeoff(res: dict, path) -> None:
    """Each seed's sweep relative to its MAP: clean NLL / MAP's (x) against shift ECE / MAP's (y); the
    issue's two targets hold together only in the shaded box x < 1, y ≤ ½."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.add_patch(plt.Rectangle((0.5, 0), 0.5, 0.5, color="tab:green", alpha=0.12, lw=0))
    ax.text(0.52, 0.05, "both targets", fontsize=7, color="tab:green")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    k1 = res["factors"].index(1)
    for i, row in enumerate(res["per_seed"]):
        mp, c = row["map"], colors[i % len(colors)]
        for link, ls, mk in (("probit", ":", "s"), ("probit_centred", "-", "o")):
            pts = row["sweep"][link]
            xs = [p["clean_nll"] / mp["clean_nll"] for p in pts]
            ys = [p["shift_ece"] / mp["shift_ece"] for p in pts]
            ax.plot(xs, ys, ls=ls, marker=".", ms=3, color=c, lw=1,
                    label=f"seed {row['seed']}" if link == "probit_centred" else None)
            ax.plot(xs[k1], ys[k1], marker=mk, mfc="none", ms=7, color=c)
    ax.plot(1, 1, marker="*", ms=12, color="k", label="MAP")
    ax.axhline(0.5, color="0.5", lw=0.8, ls="--")
    ax.axvline(1.0, color="0.5", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlim(0.5, 20)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("clean-test NLL / the MAP's")
    ax.set_ylabel("ECE under rotation / the MAP's (mean over 15–60°)")
    ax.set_title(f"{res['model'].upper()}, all-layer KFAC Laplace, P swept ×0.1…×10⁴ around the evidence's choice\n"
                 "— centred probit (○ evidence's P), ⋯ plain probit (□); large P → the MAP (★)", fontsize=8)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--memory-child")
    ap.add_argument("--parts", default="agreement,speed,memory")
    ap.add_argument("--plot", help="only draw the figure from the saved JSON to this PNG path")
    ap.add_argument("--models", default="mlp", help="ablation: comma-separated mlp, cnn")
    ap.add_argument("--seeds", default="0,1,2,3,4", help="ablation: comma-separated seeds")
    ap.add_argument("--render-ablation", action="store_true", help="print the ablation's Markdown tables from its JSON")
    ap.add_argument("--plot-only", action="store_true", help="tradeoff: redraw the figure from the saved JSON")
    a = ap.parse_args()
    if a.render_ablation:
        print(ablation_table(json.loads(ABLATION_OUT.read_text())))
        return
    if a.parts == "tradeoff":
        if not a.plot_only:  # one entry per model; a model run again replaces its entry
            saved = json.loads(TRADEOFF_OUT.read_text()) if TRADEOFF_OUT.exists() else []
            for m in a.models.split(","):
                new = tradeoff(m, [int(x) for x in a.seeds.split(",")])
                saved = [r for r in saved if r["model"] != m] + [new]
                TRADEOFF_OUT.write_text(json.dumps(saved, indent=1))
        for r in json.loads(TRADEOFF_OUT.read_text()):
            plot_tradeoff(r, Path(__file__).parents[1] / "docs" / "figures" / f"laplace_tradeoff_{r['model']}.png")
        return
    if a.parts == "ablation":
        res = ablation(a.models.split(","), [int(s) for s in a.seeds.split(",")])
        print(ablation_table(res))
        print(f"wrote {ABLATION_OUT}")
        return
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
