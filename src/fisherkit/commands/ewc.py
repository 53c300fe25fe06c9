"""``fisherkit ewc``: continual learning on a task stream — EWC against its baselines.

Examples::

    fisherkit ewc --quick --out ewc-run                      # < 1 minute: 5 permuted tasks
    fisherkit ewc --stream permuted --seeds 3 --methods finetune,l2,si,ewc,joint --out ewc-run
    fisherkit ewc --stream split-task --methods finetune,ewc,joint --strength ewc=100
    fisherkit ewc --compare-fishers --sweep 1,10,100,1000 --seeds 3   # exact / MC / empirical /
                                                                      # squared batch-mean Fisher
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

EXAMPLE = "fisherkit ewc --stream permuted --methods finetune,l2,si,ewc --seeds 3 --out ewc-run"
STREAMS = "permuted, rotated, split-task, split-domain, split-class"


def _floats(text: str, what: str) -> list[float]:
    from ..errors import FisherkitError

    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise FisherkitError(f"{what} must be comma-separated numbers, e.g. 1,10,100; got {text!r}") from None
    if not vals or any(not v >= 0 or v == float("inf") for v in vals):
        raise FisherkitError(f"{what} must hold finite numbers ≥ 0; got {text!r}")
    return vals


def _strengths(text: Optional[str]) -> dict:
    from ..errors import FisherkitError

    out = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, _, val = part.partition("=")
        if not val:
            raise FisherkitError(f"--strength takes method=value pairs, e.g. ewc=1000,l2=0.1; got {part!r}")
        out[name.strip()] = _floats(val, f"--strength {name.strip()}")[0]
    return out


def register(app: typer.Typer) -> None:
    """Add the ``ewc`` command to ``app``."""

    @app.command(
        "ewc",
        help="Learn a stream of tasks one after the other with EWC and baselines (fine-tuning, L2, SI, joint); "
        "print the accuracy / backward-transfer / forgetting table; with --out, write results.json and plots "
        "(accuracy-matrix heatmaps, per-task curves, λ sweeps).\n\n"
        f"Streams: {STREAMS}. Methods: finetune, joint, l2, si, ewc, ewc-online, ewc-kfac, ewc-mc, "
        "ewc-empirical, ewc-sqbatch (squared mini-batch-mean gradient, the common mistake).\n\n"
        f"Example: {EXAMPLE}",
    )
    def ewc(
        stream: str = typer.Option("permuted", "--stream", help=f"Task stream: {STREAMS}."),
        methods: str = typer.Option("finetune,l2,si,ewc", "--methods", help="Comma-separated methods."),
        seeds: int = typer.Option(1, "--seeds", help="Number of seeds (0, 1, ...); spread is their std."),
        n_tasks: Optional[int] = typer.Option(None, "--n-tasks", help="Tasks in the stream (default: stream's)."),
        epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs per task (default 10; --quick 3)."),
        strength: Optional[str] = typer.Option(None, "--strength", help="λ / c per method, e.g. ewc=1000,l2=0.1."),
        sweep: Optional[str] = typer.Option(None, "--sweep", help="λ values to sweep for the regularised methods, "
                                            "e.g. 1,10,100,1000."),
        compare_fishers: bool = typer.Option(False, "--compare-fishers", help="Sweep λ for EWC with the exact, MC, "
                                             "empirical and squared-batch-mean Fisher (uses --sweep values)."),
        out: Optional[Path] = typer.Option(None, "--out", help="Folder for results.json and the PNG plots."),
        quick: bool = typer.Option(False, "--quick", help="3 epochs, 5 tasks: under a minute on 2 CPU cores."),
        no_progress: bool = typer.Option(False, "--no-progress", help="Hide progress bars."),
    ) -> int:
        import torch

        from ..studies import continual as ex
        from ..continual.baselines import METHODS
        from ..errors import FisherkitError

        torch.set_num_threads(1)
        names = [m.strip() for m in methods.split(",") if m.strip()]
        bad = [m for m in names if m not in METHODS]
        if bad or not names:
            raise FisherkitError(f"unknown method(s) {bad or methods!r}; use some of {', '.join(METHODS)}")
        if seeds < 1:
            raise FisherkitError(f"--seeds must be ≥ 1; got {seeds}")
        from ..studies import continual_plots as plots
        from ..continual.streams import make_stream

        if n_tasks is not None and n_tasks < 1:
            raise FisherkitError(f"--n-tasks must be ≥ 1 (leave it out for the stream's default); got {n_tasks}")
        make_stream(stream, n_tasks)  # a bad stream / task count fails before any training
        from ._paths import check_output

        check_output(out, "--out", folder=True)
        if epochs is not None and epochs < 1:
            raise FisherkitError(f"--epochs must be ≥ 1; got {epochs}")
        strengths = _strengths(strength)
        lams = _floats(sweep, "--sweep") if sweep else None
        kw = dict(quick=quick, seeds=list(range(seeds)), n_tasks=n_tasks, epochs=epochs, progress=not no_progress)
        saved: dict = {}
        figs = {}
        res = ex.run_stream(stream, names, strengths=strengths, **kw)
        typer.echo(ex.format_table(res))
        saved["run"] = res
        figs["ewc_matrices"] = plots.plot_accuracy_matrices(res)
        figs["ewc_curves"] = plots.plot_task_curves(res)
        ref = {m: saved["run"]["methods"][m]["mean"]["acc"] for m in ("finetune", "joint") if m in names}
        if lams:
            regs = [m for m in names if m not in ("finetune", "joint")]
            if regs:
                sw = ex.lambda_sweep(stream, regs, lams, **kw)
                typer.echo(ex.format_sweep(sw))
                saved["sweep"] = sw
                figs["ewc_sweep"] = plots.plot_lambda_sweep(sw, reference=ref)
        if compare_fishers:
            cmp = ex.fisher_comparison(stream, lams or ex.FISHER_LAMS, **kw)
            typer.echo(ex.format_sweep(cmp))
            saved["fishers"] = cmp
            figs["ewc_fishers"] = plots.plot_lambda_sweep(cmp, reference=ref)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "results.json").write_text(json.dumps(saved, indent=1, default=float))
            for name, fig in figs.items():
                fig.savefig(out / f"{name}.png", dpi=110)
            typer.echo(f"wrote {out / 'results.json'} and {', '.join(f'{n}.png' for n in figs)}")
        return 0
