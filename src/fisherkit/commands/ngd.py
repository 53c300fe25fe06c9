"""``fisherkit ngd``: natural gradient (KFAC, EKFAC, diagonal, implicit CG) vs SGD+momentum and Adam.

Example::

    fisherkit ngd --quick --out ngd_out
    fisherkit ngd --seeds 3 --epochs 15 --out docs/ngd_run
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

EXAMPLE = "fisherkit ngd --quick --out ngd_out   (full run: fisherkit ngd --seeds 3 --out ngd_out)"


def _split(text: str, allowed, what: str) -> list[str]:
    from ..errors import FisherkitError

    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in names if t not in allowed]
    if bad or not names:
        raise FisherkitError(f"unknown {what} {bad or text!r}; use some of {', '.join(allowed)}")
    return names


def register(app: typer.Typer) -> None:
    """Add the ``ngd`` command to ``app``."""

    @app.command(
        "ngd",
        help="Train a digits MLP classifier and a digits autoencoder (64-32-8-32-64, Bernoulli) with the "
        "natural gradient (kfac, ekfac, diag, implicit) and with SGD+momentum and Adam, each with its learning "
        "rate picked from a small grid on the first seed; print epochs / seconds to a target loss and the ratios "
        "against Adam and SGD; with --out, write results.json, table.md and curves.png.\n\n"
        f"Example: {EXAMPLE}",
    )
    def ngd(
        seeds: int = typer.Option(3, "--seeds", help="Seeds (the first picks the learning rates)."),
        epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs per run (default 15; --quick 3)."),
        methods: str = typer.Option("kfac,ekfac,diag,implicit,sgd,adam", "--methods", help="Comma-separated."),
        problems: str = typer.Option("classifier,autoencoder", "--problems", help="classifier, autoencoder."),
        seed: int = typer.Option(0, "--seed", help="First seed."),
        out: Optional[Path] = typer.Option(None, "--out", help="Folder for results.json, table.md, curves.png."),
        quick: bool = typer.Option(False, "--quick", help="1 seed, one preset lr per method, 3 epochs (< 1 min)."),
        no_progress: bool = typer.Option(False, "--no-progress", help="Hide the progress bar."),
    ) -> int:
        from ..errors import FisherkitError
        from ..studies import ngd as ex

        ms = _split(methods, ex.METHODS, "method(s)")
        ps = _split(problems, ("classifier", "autoencoder"), "problem(s)")
        if seeds < 1:
            raise FisherkitError(f"--seeds must be ≥ 1; got {seeds}")
        if epochs is not None and epochs < 1:
            raise FisherkitError(f"--epochs must be ≥ 1; got {epochs}")
        from ._paths import check_output

        check_output(out, "--out", folder=True)  # before the computation: a bad --out must not lose the run
        res = ex.run_comparison(quick=quick, seed=seed, seeds=seeds, epochs=epochs, problems=tuple(ps),
                                methods=tuple(ms), progress=not no_progress)
        table = ex.format_table(res)
        diag = ex.format_diagnostics(res)
        typer.echo(table)
        typer.echo(diag)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "results.json").write_text(json.dumps(res, indent=1))
            (out / "table.md").write_text(table + "\n\n" + diag + "\n")
            fig = ex.plot_curves(res)
            fig.savefig(out / "curves.png", dpi=110)
            typer.echo(f"wrote {out / 'results.json'}, {out / 'table.md'}, {out / 'curves.png'}")
        return 0
