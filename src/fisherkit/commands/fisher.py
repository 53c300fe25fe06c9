"""``fisherkit fisher``: the Fisher of a small digits MLP, its spectrum, and how well each structure approximates it.

Example::

    fisherkit fisher --kind exact --top 5 --plot spectrum.png
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from ..errors import FisherkitError
from ._paths import check_output, make_parent


def register(app: typer.Typer) -> None:
    @app.command("fisher")
    def fisher_cmd(
        kind: str = typer.Option("exact", help="exact | mc | empirical"),
        hidden: int = typer.Option(32, help="hidden units of the 64-hidden-10 digits MLP"),
        epochs: int = typer.Option(60, help="full-batch Adam epochs before computing the Fisher"),
        top: int = typer.Option(5, help="how many top eigenvalues to print"),
        seed: int = typer.Option(0, help="random seed"),
        plot: Optional[Path] = typer.Option(None, help="write the spectrum plot to this PNG"),
        json_out: Optional[Path] = typer.Option(None, "--json", help="write the numbers as JSON"),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="show progress bars"),
    ) -> None:
        """Compute the Fisher of a digits MLP: trace, top eigenvalues, error of diag/block/kfac/ekfac vs dense.

        Example: fisherkit fisher --kind exact --top 5 --plot spectrum.png
        """
        from ..studies.spectrum import digits_study, plot_spectrum

        if kind not in ("exact", "mc", "empirical"):
            raise FisherkitError(f"--kind must be exact, mc or empirical; got {kind!r}")
        if hidden < 1 or hidden > 256:
            raise FisherkitError(f"--hidden must be between 1 and 256 (dense Fisher size); got {hidden}")
        if top < 1 or epochs < 0:
            raise FisherkitError("--top must be >= 1 and --epochs >= 0")
        check_output(plot, "--plot")
        check_output(json_out, "--json")
        res = digits_study(hidden=hidden, epochs=epochs, seed=seed, kind=kind, top=top, progress=progress)
        con = Console()
        con.print(f"digits MLP 64-{hidden}-10: {res['parameters']} parameters, N = {res['samples']}, "
                  f"test accuracy {res['test_accuracy']:.3f}; {kind} Fisher trace {res['trace']:.4g}")
        con.print("top eigenvalues: " + ", ".join(f"{v:.4g}" for v in res["top_eigenvalues"]))
        t = Table(title="relative Frobenius error vs the dense Fisher")
        t.add_column("structure")
        t.add_column("‖F_s − F‖ / ‖F‖", justify="right")
        for s, e in res["relative_error"].items():
            t.add_row(s, f"{e:.4f}")
        con.print(t)
        if plot is not None:
            plot_spectrum(res).savefig(make_parent(plot), dpi=110)
            con.print(f"spectrum plot written to {plot}")
        if json_out is not None:
            make_parent(json_out).write_text(json.dumps({k: v for k, v in res.items()}, indent=1))
