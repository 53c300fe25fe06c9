"""``fisherkit prune``: accuracy against sparsity for magnitude, OBD, WoodFisher and KFAC-OBS on digits.

Examples::

    fisherkit prune --quick                                  # MLP, 1 seed, 3 methods, 2 sparsities
    fisherkit prune --arch cnn --seeds 3 --out prune-run     # every method and sparsity, table + plot
    fisherkit prune --methods magnitude,kfac --sparsities 0.9,0.95
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

EXAMPLE = "fisherkit prune --arch mlp --seeds 3 --out prune-run"


def register(app: typer.Typer) -> None:
    """Add the ``prune`` command to ``app``."""

    @app.command(
        "prune",
        help="Train an MLP (64-64-64-10) or a small CNN on digits, prune it one-shot with each method to each "
        "sparsity, fine-tune briefly with the masks held, and print test accuracy (one-shot / fine-tuned); with "
        "--out, write results.json and prune_<arch>.png.\n\nMethods: magnitude, magnitude-layer, obd, woodfisher, "
        "woodfisher-noupdate, kfac, kfac-noupdate.\n\n"
        f"Example: {EXAMPLE}",
    )
    def prune(
        arch: str = typer.Option("mlp", "--arch", help="mlp or cnn."),
        methods: Optional[str] = typer.Option(None, "--methods", help="Comma-separated methods."),
        sparsities: str = typer.Option("0.5,0.7,0.8,0.9,0.95", "--sparsities", help="Comma-separated, in [0, 1)."),
        seeds: int = typer.Option(3, "--seeds", help="Number of seeds (0, 1, ...)."),
        finetune_epochs: int = typer.Option(2, "--finetune-epochs", help="Epochs of fine-tuning after pruning."),
        quick: bool = typer.Option(False, "--quick", help="1 seed; magnitude, obd, kfac; sparsities 0.5, 0.9."),
        out: Optional[Path] = typer.Option(None, "--out", help="Folder for results.json and prune_<arch>.png."),
    ) -> int:
        import torch

        from ..errors import FisherkitError
        from ..studies import prune as ex

        if arch not in ("mlp", "cnn"):
            raise FisherkitError(f"--arch must be mlp or cnn; got {arch!r}")
        names = [m.strip() for m in methods.split(",") if m.strip()] if methods else (
            ["magnitude", "obd", "kfac"] if quick else list(ex.METHOD_SPECS))
        bad = [m for m in names if m not in ex.METHOD_SPECS]
        if bad or not names:
            raise FisherkitError(f"unknown method(s) {bad or methods!r}; choose from {', '.join(ex.METHOD_SPECS)}")
        try:
            sp = [float(s) for s in sparsities.split(",") if s.strip()]
        except ValueError:
            raise FisherkitError(f"--sparsities must be comma-separated numbers in [0, 1); got {sparsities!r}") from None
        if quick and sparsities == "0.5,0.7,0.8,0.9,0.95":
            sp = [0.5, 0.9]
        if not sp or any(not 0 <= s < 1 for s in sp):
            raise FisherkitError(f"--sparsities must lie in [0, 1); got {sparsities!r}")
        if seeds < 1 or finetune_epochs < 0:
            raise FisherkitError(f"--seeds must be ≥ 1 and --finetune-epochs ≥ 0; got {seeds}, {finetune_epochs}")
        from ._paths import check_output

        check_output(out, "--out", folder=True)
        torch.set_num_threads(1)
        res = ex.run(arch, seeds=tuple(range(1 if quick else seeds)), sparsities=tuple(sp), methods=tuple(names),
                     finetune_epochs=finetune_epochs)
        typer.echo(ex.format_table(res))
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "results.json").write_text(json.dumps(res, indent=1, default=float))
            ex.plot(res, out / f"prune_{arch}.png")
            typer.echo(f"wrote {out / 'results.json'} and prune_{arch}.png")
        return 0
