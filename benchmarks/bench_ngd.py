"""Benchmark: natural gradient (kfac, ekfac, diag, implicit) vs SGD+momentum and Adam on digits.

Prints the Markdown table (epochs / seconds to the target loss, ratios against Adam and SGD) and
writes results.json, table.md and curves.png to --out. Same code as ``fisherkit ngd``.

    python benchmarks/bench_ngd.py --quick            # < 1 minute
    python benchmarks/bench_ngd.py --seeds 3 --out docs/ngd_run
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("bench_ngd_out"))
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from fisherkit.studies import ngd as ex

    res = ex.run_comparison(quick=args.quick, seeds=args.seeds, epochs=args.epochs, progress=not args.no_progress)
    table, diag = ex.format_table(res), ex.format_diagnostics(res)
    print(table)
    print(diag)
    print(f"total {res['total_seconds']:.1f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(res, indent=1))
    (args.out / "table.md").write_text(table + "\n\n" + diag + "\n")
    ex.plot_curves(res).savefig(args.out / "curves.png", dpi=110)
    print(f"wrote {args.out}/results.json, table.md, curves.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
