"""Run the demo's sections and write the report: ``index.html``, ``results.json`` and one PNG per plot.

>>> from fisherkit.report import run_demo
>>> run = run_demo("fisherkit-report", quick=True, only=["likelihood"])   # doctest: +SKIP
>>> run.ok, run.index                                                        # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from ..curvature.io import atomic_write
from ..errors import FisherkitError
from .figures import png_bytes
from .html import render
from .registry import Context, SectionResult, resolve, run_section, to_python

RESULTS_VERSION = 1


@dataclass
class DemoRun:
    """What ``run_demo`` wrote and found."""

    sections: list[SectionResult]
    out_dir: Path
    index: Path
    results: Path
    seconds: float
    cpu_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.sections)

    @property
    def failed(self) -> list[str]:
        return [s.key for s in self.sections if not s.ok]


def _atomic_write(path: Path, data: bytes) -> None:
    """The library's one atomic write (``curvature.io.atomic_write``): temp file, fsync, rename, with
    ordinary permissions (0666 & ~umask, or those of the file replaced) instead of mkstemp's 0600."""
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def _json_safe(value: Any) -> Any:
    """Plain-Python JSON value; non-finite floats become the strings "nan"/"inf"/"-inf"."""
    value = to_python(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def prepare_out_dir(out: str | os.PathLike) -> Path:
    """Create the output folder (and parents); refuse a path that is an existing file."""
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise FisherkitError(f"--out {str(path)!r} is a file; give a folder (it is created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FisherkitError(f"cannot create the output folder {str(path)!r}: {e.strerror}") from None
    if not os.access(path, os.W_OK):
        raise FisherkitError(f"the output folder {str(path)!r} is not writable")
    return path


def _figure_file(key: str, name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{key}-{name}") + ".png"


def run_demo(
    out: str | os.PathLike = "fisherkit-report",
    quick: bool = False,
    seed: int = 0,
    only: list[str] | None = None,
    progress: bool = True,
    console=None,
    on_section: Callable[[str, int, int, SectionResult | None], None] | None = None,
) -> DemoRun:
    """Run the chosen sections (all by default) and write ``out/index.html``, ``out/results.json``
    and ``out/<section>-<plot>.png``. A failing section is recorded (in the page and in the JSON)
    and the others still run. ``on_section(title, i, n, result)`` is called before (result None)
    and after each section. Torch runs single-threaded meanwhile (restored afterwards).
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise FisherkitError(f"seed must be a non-negative integer; got {seed!r}")
    specs = resolve(only)
    out_dir = prepare_out_dir(out)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models: extra threads cost more than they give (see docs/demo.md)
    try:
        return _run(specs, out_dir, quick, seed, progress, console, on_section)
    finally:
        torch.set_num_threads(threads)


def _run(specs, out_dir: Path, quick: bool, seed: int, progress: bool, console, on_section) -> DemoRun:
    ctx = Context(quick=quick, seed=seed, progress=progress, console=console)
    started = datetime.now(timezone.utc)
    t0, cpu0 = time.perf_counter(), time.process_time()
    sections: list[SectionResult] = []
    images: dict[str, dict[str, bytes]] = {}
    for i, spec in enumerate(specs, start=1):
        if on_section:
            on_section(spec.title, i, len(specs), None)
        res = run_section(spec, ctx)
        images[res.key] = {}
        for name, fig in list(res.figures.items()):
            try:
                png = png_bytes(fig)
            except Exception as e:  # noqa: BLE001 - a broken figure is recorded, not fatal
                res.error = res.error or f"figure {name!r} could not be drawn: {type(e).__name__}: {e}"
                continue
            file = _figure_file(res.key, name)
            _atomic_write(out_dir / file, png)
            res.files[name] = file
            images[res.key][name] = png
        res.figures = {}
        sections.append(res)
        if on_section:
            on_section(spec.title, i, len(specs), res)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    import torch

    from .._version import __version__

    meta = {
        "fisherkit": __version__,
        "mode": "quick" if quick else "full",
        "seed": seed,
        "started (UTC)": started.strftime("%Y-%m-%d %H:%M:%S"),
        "wall time": f"{seconds:.1f} s",
        "CPU time": f"{cpu:.1f} s",
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    page = render(sections, images, meta)
    index = out_dir / "index.html"
    _atomic_write(index, page.encode("utf-8"))
    payload = {
        "format_version": RESULTS_VERSION,
        "fisherkit_version": __version__,
        "quick": quick,
        "seed": seed,
        "started_utc": started.isoformat(),
        "seconds": seconds,
        "cpu_seconds": cpu,
        "ok": all(s.ok for s in sections),
        "sections": {
            s.key: {
                "title": s.title,
                "ok": s.ok,
                "error": s.error,
                "traceback": s.traceback,
                "seconds": s.seconds,
                "cpu_seconds": s.cpu_seconds,
                "headline": s.headline,
                "figures": s.files,
                "numbers": _json_safe(s.numbers),
            }
            for s in sections
        },
    }
    results = out_dir / "results.json"
    _atomic_write(results, json.dumps(payload, indent=1, allow_nan=False).encode("utf-8"))
    return DemoRun(sections, out_dir, index, results, seconds, cpu)
