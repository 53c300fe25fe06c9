"""``fisherkit merge``: merge digit fine-tunes by averaging, task arithmetic, RegMean and the Fisher.

Examples::

    fisherkit merge --quick                                  # 1 seed, 5 families, permuted digits
    fisherkit merge --seeds 5 --out merge-run                # every family, table + grids + JSON + plot
    fisherkit merge --setting split --families average,diag,diag-normalized,kfac --seeds 3
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

EXAMPLE = "fisherkit merge --seeds 5 --out merge-run"
QUICK = ("average", "task-arithmetic", "regmean", "diag", "kfac")


def register(app: typer.Typer) -> None:
    """Add the ``merge`` command to ``app``."""

    @app.command(
        "merge",
        help="Pre-train an MLP on digits, fine-tune copies on several tasks, merge them with each family of "
        "methods, and print per-task test accuracy per seed; each family's hyper-parameter (ε, the "
        "task-arithmetic scale) is chosen on a validation split. With --out, write results.json and "
        "merge_<setting>.png.\n\n"
        "Settings: permuted (plain digits + pixel-permuted copies, shared head), split (digits 0-4 | 5-9, shared "
        "head), split-heads (0-4 | 5-9, one head per task).\n\n"
        "Families: average, task-arithmetic, regmean, diag, diag-empirical, diag-normalized, diag-at-base, kfac, "
        "kfac-normalized, kfac-at-base, kfac-layer0 (see fisherkit.studies.merge.FAMILIES).\n\n"
        f"Example: {EXAMPLE}",
    )
    def merge(
        families: Optional[str] = typer.Option(None, "--families", help="Comma-separated family names."),
        setting: str = typer.Option("permuted", "--setting", help="permuted, split or split-heads."),
        seeds: int = typer.Option(3, "--seeds", help="Number of seeds (0, 1, ...)."),
        k: int = typer.Option(3, "--k", help="Tasks in the permuted setting (plain digits + k-1 permutations)."),
        ft_epochs: Optional[int] = typer.Option(None, "--ft-epochs", help="Fine-tuning epochs per task "
                                                "(default: 20 permuted, 10 split)."),
        quick: bool = typer.Option(False, "--quick", help=f"1 seed and {len(QUICK)} families: a few minutes."),
        out: Optional[Path] = typer.Option(None, "--out", help="Folder for results.json and merge_<setting>.png."),
    ) -> int:
        import torch

        from ..errors import FisherkitError
        from ..studies import merge as ex

        names = [f.strip() for f in families.split(",") if f.strip()] if families else list(QUICK if quick else ex.FAMILIES)
        bad = [f for f in names if f not in ex.FAMILIES]
        if bad or not names:
            raise FisherkitError(f"unknown famil(y/ies) {bad or families!r}; choose from {', '.join(ex.FAMILIES)}")
        if setting not in ex.SETTINGS:
            raise FisherkitError(f"unknown setting {setting!r}; choose from {', '.join(ex.SETTINGS)}")
        if seeds < 1 or (ft_epochs is not None and ft_epochs < 1) or k < 2:
            raise FisherkitError(f"--seeds and --ft-epochs must be ≥ 1 and --k ≥ 2; got {seeds}, {ft_epochs}, {k}")
        from ._paths import check_output

        check_output(out, "--out", folder=True)
        torch.set_num_threads(1)
        res = ex.run(seeds=tuple(range(1 if quick else seeds)), setting=setting, families=tuple(names), k=k,
                     ft_epochs=ft_epochs)
        typer.echo(ex.format_table(res))
        for f in names:
            if f != "average":
                typer.echo(ex.format_grid(res, f))
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "results.json").write_text(json.dumps(res, indent=1, default=float))
            ex.plot(res, out / f"merge_{setting}.png")
            typer.echo(f"wrote {out / 'results.json'} and merge_{setting}.png")
        return 0
