"""``fisherkit active``: compare active-learning strategies on bundled data or a CSV.

Examples::

    fisherkit active --quick                                 # digits, 1 seed, < 1 minute
    fisherkit active --dataset digits --seeds 5 --out runs/active
    fisherkit active --csv mydata.csv --label species --strategies random,entropy,egl,bait
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

EXAMPLE = "fisherkit active --dataset digits --seeds 5 --out runs/active"


def register(app: typer.Typer) -> None:
    """Add the ``active`` command to ``app``."""

    @app.command(
        "active",
        help="Run pool-based active learning (an MLP retrained each round) with several query strategies; print "
        "labels-to-target and area-under-learning-curve tables (mean ± std over seeds) and write learning-curve "
        "plots and JSON to --out.\n\nStrategies: random, entropy, margin, least_confidence, bald, egl, egl_last, "
        "egl_cluster, egl_t2, badge, bait.\n\n"
        f"Example: {EXAMPLE}",
    )
    def active(
        dataset: str = typer.Option("digits", "--dataset", help="digits, breast_cancer, wine (comma-separate several)."),
        csv: Optional[Path] = typer.Option(None, "--csv", help="Your own CSV with a header (features numeric)."),
        label: Optional[str] = typer.Option(None, "--label", help="Label column of --csv (default: the last one)."),
        strategies: Optional[str] = typer.Option(None, "--strategies", help="Comma-separated strategy names."),
        seeds: int = typer.Option(5, "--seeds", help="Number of seeds (ignored with --quick: 1)."),
        seed: int = typer.Option(0, "--seed", help="First seed."),
        quick: bool = typer.Option(False, "--quick", help="1 seed, 6 rounds, 60 epochs: under a minute."),
        target: Optional[float] = typer.Option(None, "--target", help="Accuracy target for labels-to-target."),
        n_initial: Optional[int] = typer.Option(None, "--n-initial", help="Initial labelled points."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Points labelled per round."),
        rounds: Optional[int] = typer.Option(None, "--rounds", help="Rounds of labelling."),
        epochs: Optional[int] = typer.Option(None, "--epochs", help="Full-batch Adam steps per retraining."),
        out: Optional[Path] = typer.Option(None, "--out", help="Folder for active_<data>.json/.png/.md."),
        no_progress: bool = typer.Option(False, "--no-progress", help="Hide the progress bar."),
    ) -> int:
        import torch

        from ..studies.active import format_table, run_comparison
        from ..active.loop import STRATEGIES
        from ..errors import FisherkitError

        if seeds < 1 or seed < 0:
            raise FisherkitError(f"--seeds must be ≥ 1 and --seed ≥ 0; got {seeds} and {seed}")
        if target is not None and not 0 < target <= 1:
            raise FisherkitError(f"--target is an accuracy in (0, 1]; got {target}")
        names = None
        if strategies:
            names = [s.strip() for s in strategies.split(",") if s.strip()]
            bad = [s for s in names if s not in STRATEGIES]
            if bad:
                raise FisherkitError(f"unknown strategy {bad[0]!r}; choose from {', '.join(sorted(STRATEGIES))}")
        overrides = {k: v for k, v in dict(target=target, n_initial=n_initial, batch_size=batch_size, rounds=rounds,
                                           epochs=epochs).items() if v is not None}
        torch.set_num_threads(1)
        jobs = [("csv", str(csv))] if csv is not None else [(d.strip(), None) for d in dataset.split(",") if d.strip()]
        from ._paths import check_output

        check_output(out, "--out", folder=True)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
        for name, path in jobs:
            res = run_comparison(name, strategies=names, quick=quick, seed=seed,
                                 seeds=None if quick else list(range(seed, seed + seeds)), progress=not no_progress,
                                 csv=path, label=label, **overrides)
            cfg = res["config"]
            head = (f"{res['dataset']}: {cfg['model']}, {cfg['n_initial']} initial + {cfg['rounds']} × "
                    f"{cfg['batch_size']} labels, {len(cfg['seeds'])} seed(s), {res['seconds']:.0f} s")
            table = format_table(res)
            typer.echo(head)
            typer.echo(table)
            typer.echo("")
            if out is not None:
                from ..studies.active_plots import plot_learning_curves

                stem = Path(path).stem if path else name
                (out / f"active_{stem}.json").write_text(json.dumps(res, indent=1))
                (out / f"active_{stem}.md").write_text(f"{head}\n\n```\n{table}\n```\n")
                plot_learning_curves(res).savefig(out / f"active_{stem}.png", dpi=110)
        return 0
