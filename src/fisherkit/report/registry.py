"""The demo's sections: what each returns, the context it gets, and the registry that orders them.

A section is a function ``(ctx: Context) -> SectionResult``. Registering one is a decorator::

    @section("likelihood", "Likelihood and its curvature", order=1)
    def likelihood(ctx): ...

``run_section`` turns any exception into a ``SectionResult`` with ``error`` set, so one failing
section never takes the report down with it; the report and ``results.json`` show the error.
"""

from __future__ import annotations

import contextlib
import math
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from ..errors import FisherkitError


@dataclass
class SectionResult:
    """What a section produced.

    ``text`` is trusted HTML written by the section (paragraphs, formulas as text); ``numbers``
    maps a short name to a float, int, bool, string or a (nested) list/dict of those;
    ``figures`` maps a file stem to a matplotlib Figure; ``headline`` is one line for the terminal.
    """

    title: str
    text: str = ""
    numbers: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    headline: str = ""
    error: str | None = None
    traceback: str | None = None
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    key: str = ""
    files: dict[str, str] = field(default_factory=dict)  # figure name -> PNG file name

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Context:
    """What every section gets: the run's settings and a way to show progress.

    ``rng(offset)`` gives an independent, reproducible numpy generator per use;
    ``torch_seed(offset)`` the matching integer seed for torch.
    """

    quick: bool = True
    seed: int = 0
    progress: bool = False
    console: Any = None

    def rng(self, offset: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, offset])

    def torch_seed(self, offset: int = 0) -> int:
        return int(self.rng(offset).integers(0, 2**31 - 1))

    def track(self, iterable: Iterable, total: int | None = None, description: str = "") -> Iterable:
        """Iterate, showing a transient rich progress bar when progress is on (plain iteration otherwise).

        The bar lives only while this loop runs, so the experiments of other packages can show
        their own bars in between (rich allows one live display at a time).
        """
        if not self.progress:
            yield from iterable
            return
        from rich.progress import Progress

        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)
        with Progress(transient=True, console=self.console) as bar:
            task = bar.add_task(description, total=total)
            for item in iterable:
                yield item
                bar.advance(task)


@dataclass
class SectionSpec:
    key: str
    title: str
    order: int
    func: Callable[[Context], SectionResult]
    aliases: tuple[str, ...] = ()


SECTIONS: dict[str, SectionSpec] = {}


def section(key: str, title: str, order: int, aliases: tuple[str, ...] = ()):
    """Register ``func`` as the demo section ``key`` (shown in ``order``)."""

    def wrap(func):
        SECTIONS[key] = SectionSpec(key, title, order, func, aliases)
        return func

    return wrap


def ordered_sections() -> list[SectionSpec]:
    _load_all()
    return sorted(SECTIONS.values(), key=lambda s: s.order)


def _load_all() -> None:
    from . import applications, geometry, likelihood, sensitivity, spectrum  # noqa: F401  (registers)


def resolve(names: Iterable[str] | None) -> list[SectionSpec]:
    """Section specs for user-given names (keys, aliases or 1-based numbers; commas allowed).

    Unknown names raise ``FisherkitError`` listing the valid ones. ``None``/empty means all.
    """
    specs = ordered_sections()
    if not names:
        return specs
    lookup: dict[str, SectionSpec] = {}
    for i, s in enumerate(specs, start=1):
        for alias in (s.key, str(i), *s.aliases):
            lookup[alias.lower()] = s
    chosen: list[SectionSpec] = []
    for raw in names:
        for name in (p.strip() for p in str(raw).split(",")):
            if not name:
                continue
            if name.lower() not in lookup:
                valid = ", ".join(f"{i} {s.key}" for i, s in enumerate(specs, start=1))
                raise FisherkitError(f"unknown section {name!r}; choose from: {valid}")
            if lookup[name.lower()] not in chosen:
                chosen.append(lookup[name.lower()])
    return sorted(chosen, key=lambda s: s.order)


def run_section(spec: SectionSpec, ctx: Context) -> SectionResult:
    """Run one section; an exception becomes ``SectionResult(error=...)`` instead of propagating."""
    start, cpu = time.perf_counter(), time.process_time()
    try:
        res = spec.func(ctx)
        if not isinstance(res, SectionResult):
            raise TypeError(f"section {spec.key!r} returned {type(res).__name__}, not SectionResult")
        bad = [k for k, v in flat_numbers(res.numbers).items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            res.error = f"non-finite numbers: {', '.join(bad)}"
    except Exception as e:  # noqa: BLE001 - the report must survive any section
        res = SectionResult(title=spec.title, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
    res.key = spec.key
    res.title = res.title or spec.title
    res.seconds = time.perf_counter() - start
    res.cpu_seconds = time.process_time() - cpu
    return res


def flat_numbers(numbers: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts/lists of numbers → {"a.b.0": value}, numpy/torch scalars turned into Python."""
    out: dict[str, Any] = {}
    numbers = to_python(numbers)
    if isinstance(numbers, dict):
        for k, v in numbers.items():
            out.update(flat_numbers(v, f"{prefix}{k}."))
    elif isinstance(numbers, (list, tuple)):
        for i, v in enumerate(numbers):
            out.update(flat_numbers(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = to_python(numbers)
    return out


def to_python(value: Any) -> Any:
    """numpy / torch scalars and arrays → plain Python (floats, ints, bools, lists)."""
    with contextlib.suppress(ImportError):
        import torch

        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value.tolist() if value.ndim else value.item()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): to_python(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_python(v) for v in value]
    return value
