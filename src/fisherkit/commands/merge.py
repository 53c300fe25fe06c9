"""``fisherkit merge``: merge two digit fine-tunes by averaging, task arithmetic, RegMean and the Fisher.

Examples::

    fisherkit merge --quick                                  # 1 seed, 6 variants, about a minute
    fisherkit merge --seeds 3 --out merge-run                # every variant, table + JSON + plot
    fisherkit merge --variants average,diag,diag-normalized,kfac-body-at-base --seeds 3
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

EXAMPLE = "fisherkit merge --seeds 3 --out merge-run"
QUICK = ("average", "regmean", "diag", "diag-normalized", "kfac", "kfac-body-at-base")


def register(app: typer.Typer) -> None:
    """Add the ``merge`` command to ``app``."""

    @app.command(
        "merge",
        help="Pre-train an MLP on digits, fine-tune one copy on digits 0-4 and one on 5-9 (shared head), merge "
        "them with each variant and print per-task test accuracy (mean over seeds, difference to averaging per "
        "seed); with --out, write results.json and merge_variants.png.\n\n"
        "Variants: average, task-arithmetic, regmean, and Fisher merges named <structure>[-body][-at-base]"
        "[-normalized][-eps<ε>][-empirical] (see fisherkit.studies.merge.VARIANTS).\n\n"
        f"Example: {EXAMPLE}",
    )
    def merge(
        variants: Optional[str] = typer.Option(None, "--variants", help="Comma-separated variant names."),
        seeds: int = typer.Option(3, "--seeds", help="Number of seeds (0, 1, ...)."),
        ft_epochs: int = typer.Option(10, "--ft-epochs", help="Fine-tuning epochs per task."),
        quick: bool = typer.Option(False, "--quick", help=f"1 seed and {len(QUICK)} variants: about a minute."),
        out: Optional[Path] = typer.Option(None, "--out", help="Folder for results.json and merge_variants.png."),
    ) -> int:
        import torch

        from ..errors import FisherkitError
        from ..studies import merge as ex

        names = [v.strip() for v in variants.split(",") if v.strip()] if variants else list(QUICK if quick else ex.VARIANTS)
        bad = [v for v in names if v not in ex.VARIANTS]
        if bad or not names:
            raise FisherkitError(f"unknown variant(s) {bad or variants!r}; choose from {', '.join(ex.VARIANTS)}")
        if seeds < 1 or ft_epochs < 1:
            raise FisherkitError(f"--seeds and --ft-epochs must be ≥ 1; got {seeds} and {ft_epochs}")
        from ._paths import check_output

        check_output(out, "--out", folder=True)
        torch.set_num_threads(1)
        res = ex.run(seeds=tuple(range(1 if quick else seeds)), variants=tuple(names), ft_epochs=ft_epochs)
        typer.echo(ex.format_table(res))
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "results.json").write_text(json.dumps(res, indent=1, default=float))
            ex.plot(res, out / "merge_variants.png")
            typer.echo(f"wrote {out / 'results.json'} and merge_variants.png")
        return 0
