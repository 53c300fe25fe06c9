"""Cost of EGL scoring relative to one plain forward + backward pass over the same pool.

Target (issue 8): scoring a 10,000-point pool with 10 classes costs ≤ 5× one forward+backward pass.
Every number is a ratio to the plain pass timed in the same process, interleaved (the machine is
shared; absolute times drift). The plain pass is the faster of batch 2,048 and one full batch.
Also timed: the last-layer closed form, and the common torch.func recipe (vmap(grad) per class,
per-sample gradients materialised, L2 norm) on a 1,000-point slice (200 for the large MLP) scaled to the pool, which also serves
as an independent check of the values.

    python benchmarks/bench_active.py            # 10,000 points, 5 repeats
    python benchmarks/bench_active.py --quick    # 2,000 points, 3 repeats
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from fisherkit.active import egl_scores

C = 10


def models():
    torch.manual_seed(0)
    mlp = lambda *d: nn.Sequential(*[m for a, b in zip(d[:-1], d[1:]) for m in (nn.Linear(a, b), nn.ReLU())][:-1])  # noqa: E731
    cnn = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.ReLU(),
                        nn.Flatten(), nn.Linear(32 * 4 * 4, C))
    return {
        "MLP 64-64-64-10 (experiment model)": (mlp(64, 64, 64, C), (64,)),
        "MLP 64-128-128-10": (mlp(64, 128, 128, C), (64,)),
        "MLP 784-512-512-10": (mlp(784, 512, 512, C), (784,)),
        "CNN c16-c32-fc10 on 8x8": (cnn, (1, 8, 8)),
    }


def plain_pass(model, X, y, bs):
    for s in range(0, X.shape[0], bs):
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(X[s : s + bs]), y[s : s + bs], reduction="sum").backward()


def torch_func_egl(model, X, chunk=100):
    """The usual recipe: per class, vmap(grad) per-sample gradients, squared L2 norms, weighted by p."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, x, label):
        return nn.functional.cross_entropy(functional_call(model, p, (x.unsqueeze(0),)), label.unsqueeze(0))

    with torch.no_grad():
        prob = torch.softmax(model(X), -1)
    total = torch.zeros(X.shape[0])
    per = vmap(grad(loss), in_dims=(None, 0, 0))
    for s in range(0, X.shape[0], chunk):
        x = X[s : s + chunk]
        for c in range(C):
            g = per(params, x, torch.full((x.shape[0],), c))
            total[s : s + chunk] += prob[s : s + chunk, c] * sum(v.reshape(x.shape[0], -1).pow(2).sum(1) for v in g.values())
    return total


def timeit(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench(name, model, shape, n, repeats):
    model.eval()
    g = torch.Generator().manual_seed(1)
    X = torch.randn(n, *shape, generator=g)
    y = torch.randint(0, C, (n,), generator=g)
    n_ref = 1000 if sum(p.numel() for p in model.parameters()) < 100_000 else 200
    sub = X[:n_ref]
    fns = {
        "plain_b2048": lambda: plain_pass(model, X, y, 2048),
        "plain_full": lambda: plain_pass(model, X, y, n),
        "egl_all": lambda: egl_scores(model, X),
        "egl_last_layer": lambda: egl_scores(model, X, scope="last_layer"),
        "torch_func_ref": lambda: torch_func_egl(model, sub),
    }
    for f in fns.values():  # warm-up
        f()
    times = {k: [] for k in fns}
    for _ in range(repeats):  # interleaved
        for k, f in fns.items():
            times[k].append(timeit(f))
    med = {k: statistics.median(v) for k, v in times.items()}
    base = min(med["plain_b2048"], med["plain_full"])
    ours, ref = egl_scores(model, sub), torch_func_egl(model, sub)
    rel = float(((ours - ref).abs() / ref.abs().clamp_min(1e-12)).max())
    return {
        "model": name, "pool": n, "classes": C, "params": sum(p.numel() for p in model.parameters()),
        "plain_pass_s": base, "egl_all_s": med["egl_all"], "egl_last_layer_s": med["egl_last_layer"],
        "torch_func_s_scaled": med["torch_func_ref"] * n / n_ref, "torch_func_points": n_ref,
        "ratio_egl_all": med["egl_all"] / base, "ratio_egl_last_layer": med["egl_last_layer"] / base,
        "ratio_torch_func": med["torch_func_ref"] * n / n_ref / base,
        "ratio_spread_egl_all": [min(times["egl_all"]) / base, max(times["egl_all"]) / base],
        "max_rel_diff_vs_torch_func": rel, "repeats": repeats,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--models", default="", help="comma-separated substrings: run only matching models")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "bench_active.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    n, repeats = (2000, 3) if args.quick else (10_000, 5)
    repeats = args.repeats or repeats
    wanted = [w.strip() for w in args.models.split(",") if w.strip()]
    rows = []
    print(f"EGL scoring cost, {n} points, {C} classes, float32, 1 thread; ratio = time / one plain fwd+bwd pass")
    print(f"{'model':<36}{'params':>9}{'plain s':>9}{'EGL all':>9}{'(min-max)':>13}{'last layer':>11}"
          f"{'torch.func':>11}{'max rel diff':>13}")
    for name, (model, shape) in models().items():
        if wanted and not any(w in name for w in wanted):
            continue
        r = bench(name, model, shape, n, repeats)
        rows.append(r)
        lo, hi = r["ratio_spread_egl_all"]
        print(f"{name:<36}{r['params']:>9}{r['plain_pass_s']:>9.3f}{r['ratio_egl_all']:>8.2f}x"
              f"{f'({lo:.1f}-{hi:.1f})':>13}{r['ratio_egl_last_layer']:>10.2f}x{r['ratio_torch_func']:>10.1f}x"
              f"{r['max_rel_diff_vs_torch_func']:>13.1e}", flush=True)
    target = all(r["ratio_egl_all"] <= 5 for r in rows)
    print(f"target ≤ 5x for every model: {'met' if target else 'missed'}")
    out = {"rows": rows, "target_5x_met": target, "torch": torch.__version__, "python": platform.python_version(),
           "machine": platform.machine(), "threads": 1, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
