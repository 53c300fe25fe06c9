"""``fisherkit bench``: time fisherkit's Fisher against a plain epoch and the peers (benchmarks/bench_fisher.py).

Examples::

    fisherkit bench --quick                       # reduced data, fisherkit + any installed peers
    fisherkit bench --quick --no-peers --no-memory --models M1
    .venv-bench/bin/fisherkit bench --out benchmarks   # the full run, peers installed from the bench extra

The benchmark script lives in the source checkout (``benchmarks/``), not in the wheel.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional

import typer

from ..errors import FisherkitError

MODELS = ("M1", "M2", "M3", "M4")


def find_script() -> Path:
    """``benchmarks/bench_fisher.py`` of the checkout this package was installed from."""
    script = Path(__file__).resolve().parents[3] / "benchmarks" / "bench_fisher.py"
    if not script.is_file():
        raise FisherkitError(
            f"benchmark script not found at {script}; `fisherkit bench` runs from a source checkout "
            "(pip install -e .), since benchmarks/ is not part of the installed package"
        )
    return script


def build_argv(quick, models, repeats, no_peers, no_memory, stream_samples, threads, out, samples=None,
               skip="") -> list[str]:
    """Command-line arguments for bench_fisher.main, with user mistakes reported as FisherkitError."""
    names = [m.strip() for m in models.split(",") if m.strip()]
    bad = [m for m in names if m not in MODELS]
    if not names or bad:
        raise FisherkitError(f"--models: unknown model(s) {bad or [models]}; choose from {', '.join(MODELS)}")
    if repeats is not None and repeats < 1:
        raise FisherkitError(f"--repeats must be at least 1; got {repeats}")
    if threads < 1:
        raise FisherkitError(f"--threads must be at least 1; got {threads}")
    if stream_samples is not None and stream_samples < 0:
        raise FisherkitError(f"--stream-samples must be ≥ 0 (0 skips the check); got {stream_samples}")
    if samples is not None and samples < 1:
        raise FisherkitError(f"--samples must be at least 1; got {samples}")
    argv = ["--models", ",".join(names), "--threads", str(threads)]
    if samples is not None:
        argv += ["--samples", str(samples)]
    if skip:
        argv += ["--skip", skip]
    if quick:
        argv.append("--quick")
    if repeats is not None:
        argv += ["--repeats", str(repeats)]
    if no_peers:
        argv.append("--no-peers")
    if no_memory:
        argv.append("--no-memory")
    if stream_samples is not None:
        argv += ["--stream-samples", str(stream_samples)]
    if out is not None:
        if out.exists() and not out.is_dir():
            raise FisherkitError(f"--out {out} is a file; give a directory for the JSON results")
        argv += ["--out", str(out / ("bench-quick.json" if quick else "bench.json"))]
    return argv


def register(app: typer.Typer) -> None:
    """Add the ``bench`` command to ``app``."""

    @app.command(
        "bench",
        help="Time fisherkit's Fisher (diag, kfac, ekfac, dense, implicit, lowrank) on four models against a "
        "plain forward+backward epoch and against BackPACK / NNGeometry / curvlinops when installed; "
        "prints a table of ratios and writes JSON.\n\nExample: fisherkit bench --quick --no-memory",
    )
    def bench(
        quick: bool = typer.Option(False, "--quick", help="Reduced data (a few minutes)."),
        models: str = typer.Option(",".join(MODELS), "--models", help="Comma-separated subset of M1,M2,M3,M4."),
        repeats: Optional[int] = typer.Option(None, "--repeats", help="Timed repeats per method (default 3 quick, 5 full)."),
        no_peers: bool = typer.Option(False, "--no-peers", help="Skip BackPACK / NNGeometry / curvlinops."),
        no_memory: bool = typer.Option(False, "--no-memory", help="Skip the per-process peak-memory probes."),
        stream_samples: Optional[int] = typer.Option(
            None, "--stream-samples", help="Samples for the 10M-parameter streaming check (0 skips it)."),
        threads: int = typer.Option(1, "--threads", help="torch.set_num_threads for the timings."),
        out: Optional[Path] = typer.Option(None, "--out", help="Directory for the JSON results (default benchmarks/)."),
        samples: Optional[int] = typer.Option(None, "--samples", help="Samples per model (overrides the defaults)."),
        skip: str = typer.Option("", "--skip", help="Method keys to skip, e.g. lowrank,dense,ekfac."),
    ) -> int:
        argv = build_argv(quick, models, repeats, no_peers, no_memory, stream_samples, threads, out, samples, skip)
        script = find_script()
        spec = importlib.util.spec_from_file_location("fisherkit_bench_fisher", script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.main(argv)
