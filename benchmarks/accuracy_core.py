"""Largest relative error of every exact structure against the float64 jacrev brute force.

    python benchmarks/accuracy_core.py [--json out.json]

Models: MLP, CNN, Conv1d, residual, LayerNorm+Embedding, attention, per-token outputs; likelihoods:
categorical, gaussian, bernoulli; kinds: exact, empirical. Prints a table and writes JSON.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import fisherkit as fk  # noqa: E402
from models import labels, make  # noqa: E402
from reference import brute_fisher  # noqa: E402


def rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default="benchmarks/results/accuracy_core.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    worst = {s: (0.0, "") for s in ["dense", "diag", "block", "lowrank(top-5)", "implicit", "fvp"]}
    for name in ["mlp", "cnn", "conv1d", "residual", "ln_emb", "attention", "tokens"]:
        for lik in ["categorical", "gaussian", "bernoulli"]:
            for kind in ["exact", "empirical"]:
                m, X = make(name)
                y = labels(m, X, lik)
                ref = brute_fisher(m, X, y, lik, kind)
                v = torch.randn(ref.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
                errs = {
                    "dense": rel(fk.fisher(m, (X, y), likelihood=lik, kind=kind, structure="dense").to_dense(), ref),
                    "diag": rel(fk.fisher(m, (X, y), likelihood=lik, kind=kind, structure="diag").diag(), ref.diagonal()),
                    "implicit": rel(fk.fisher(m, (X, y), likelihood=lik, kind=kind, structure="implicit").mv(v), ref @ v),
                    "fvp": rel(fk.fvp(m, (X, y), v, likelihood=lik, kind=kind), ref @ v),
                }
                B = fk.fisher(m, (X, y), likelihood=lik, kind=kind, structure="block").to_dense()
                mask = B != 0
                errs["block"] = rel(B[mask], ref[mask])
                vals = torch.linalg.eigvalsh(ref).flip(0)[:5]
                L = fk.fisher(m, (X, y), likelihood=lik, kind=kind, structure="lowrank", rank=5)
                errs["lowrank(top-5)"] = rel(L.eig(5)[0], vals)
                for s, e in errs.items():
                    if e >= worst[s][0]:
                        worst[s] = (e, f"{name}/{lik}/{kind}")
    print(f"{'structure':<16}{'max rel. error':>16}  case")
    for s, (e, case) in worst.items():
        print(f"{s:<16}{e:>16.2e}  {case}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({s: {"max_relative_error": e, "case": c} for s, (e, c) in worst.items()}, indent=1))


if __name__ == "__main__":
    main()
