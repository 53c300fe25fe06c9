"""``fisherkit demo``: run the tour and write a self-contained HTML report.

Examples::

    fisherkit demo --quick --out report        # about a minute on 2 CPU cores
    fisherkit demo --only likelihood --only spectrum
    fisherkit demo --seed 1 --no-progress --out full-report
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

EXAMPLE = "fisherkit demo --quick --out report"
# kept literal so that `fisherkit --help` need not import the sections (a test checks it matches)
SECTION_NAMES = "1 likelihood, 2 geometry, 3 natural_gradient, 4 continual, 5 active, 6 spectrum, 7 laplace, 8 sensitivity"


def _console():
    from rich.console import Console

    return Console(highlight=False)


def _summary_table(run):
    from rich.table import Table

    table = Table(title=f"fisherkit demo — {run.seconds:.1f} s ({run.cpu_seconds:.1f} s CPU)", title_justify="left")
    table.add_column("section")
    table.add_column("status")
    table.add_column("time", justify="right")
    table.add_column("headline", overflow="fold")
    for s in run.sections:
        status = "[green]ok[/green]" if s.ok else "[red]failed[/red]"
        table.add_row(s.title, status, f"{s.seconds:.1f} s", s.headline if s.ok else (s.error or ""))
    return table


def register(app: typer.Typer) -> None:
    """Add the ``demo`` command to ``app``."""
    @app.command(
        "demo",
        help="Run the tour of Fisher information and write DIR/index.html (self-contained: plots embedded, "
        "no network), DIR/results.json and the plots as PNG files.\n\n"
        f"Sections: {SECTION_NAMES}.\n\n"
        "--quick takes about a minute on 2 CPU cores, the full run up to 30 minutes.\n\n"
        f"Example: {EXAMPLE}",
    )
    def demo(
        quick: bool = typer.Option(False, "--quick", help="Small settings: about a minute on 2 CPU cores."),
        out: Path = typer.Option(Path("fisherkit-report"), "--out", help="Folder for index.html, results.json and PNGs."),
        seed: int = typer.Option(0, "--seed", help="Seed of every random choice (non-negative)."),
        only: Optional[List[str]] = typer.Option(
            None, "--only", help="Run only this section (name or number; repeat or comma-separate)."
        ),
        no_progress: bool = typer.Option(False, "--no-progress", help="Hide progress bars."),
    ) -> int:
        from ..report import resolve, run_demo
        from ..report.tour import prepare_out_dir
        from ..errors import FisherkitError

        if seed < 0:
            raise FisherkitError(f"--seed must be a non-negative integer; got {seed}")
        resolve(only)  # unknown names fail here, before anything runs
        prepare_out_dir(out)
        console = _console()

        def on_section(title, i, n, res):
            if res is None:
                console.print(f"[bold]\\[{i}/{n}][/bold] {title} …")
            elif res.ok:
                console.print(f"      [green]done[/green] in {res.seconds:.1f} s")
            else:
                console.print(f"      [red]failed[/red] after {res.seconds:.1f} s: {res.error}")

        run = run_demo(out, quick=quick, seed=seed, only=only, progress=not no_progress, console=console,
                       on_section=on_section)
        console.print(_summary_table(run))
        console.print(f"Report: {run.index}\nNumbers: {run.results}")
        if not run.ok:
            console.print(f"[red]{len(run.failed)} section(s) failed:[/red] {', '.join(run.failed)} "
                          "(details in the report and results.json)")
            return 1
        return 0
