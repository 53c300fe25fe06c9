"""The API's vocabulary and its validation, in one place every layer imports.

* ``KINDS``: how the expectation over labels is taken — ``"exact"`` (all output directions of the
  output-Fisher square root), ``"mc"`` (sampled labels), ``"empirical"`` (observed labels; biased).
* ``STRUCTURES``: how the matrix is stored — ``"dense" | "diag" | "block" | "kfac" | "ekfac" |
  "lowrank" | "implicit"``. ``curvature.STRUCTURES`` maps each name to its class; every front-end
  (``fisher``, ``NaturalGradient``, ``EWC``) accepts these names or refuses one with a reason.
* ``check_*``: argument checks raising ``FisherkitError`` before any work.
"""

from __future__ import annotations

import math

from .errors import FisherkitError

KINDS = ("exact", "mc", "empirical")
STRUCTURES = ("dense", "diag", "block", "kfac", "ekfac", "lowrank", "implicit")


def check_choice(name: str, value, choices, why: dict | None = None) -> None:
    """``value`` must be one of ``choices``; ``why`` maps a known-but-refused value to the reason."""
    if why and value in why:
        raise FisherkitError(f"{name}={value!r} is not supported here: {why[value]}")
    if not isinstance(value, str) or value not in choices:
        raise FisherkitError(f"unknown {name} {value!r}; use one of {list(choices)}")


def check_kind(kind, mc_samples=1) -> None:
    check_choice("kind", kind, KINDS)
    if kind == "mc":
        check_every("mc_samples", mc_samples)


def check_structure(structure, allowed=STRUCTURES, why: dict | None = None) -> None:
    check_choice("structure", structure, allowed, why)


def check_positive(name: str, value, allow_none: bool = False) -> None:
    """Raise ``FisherkitError`` unless ``value`` is a finite number > 0 (or None when allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise FisherkitError(f"{name} must be a finite number > 0; got {value!r}")


def check_fraction(name: str, value) -> None:
    """``value`` in [0, 1) (EMA decay, momentum)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value < 1):
        raise FisherkitError(f"{name} must be a number in [0, 1); got {value!r}")


def check_every(name: str, value) -> None:
    """A positive integer (a number of steps or samples)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FisherkitError(f"{name} must be a positive integer; got {value!r}")


def as_generator(generator=None, seed=None, device="cpu", default_seed: int = 0, owner: str = ""):
    """``(torch.Generator, seed)`` from the API's one randomness argument, ``generator=``.

    ``generator`` may be a ``torch.Generator`` (used as handed over: it advances), an int seed (a new
    generator seeded with it), or None (``default_seed``). ``seed=`` is the older name of the same
    idea, still accepted with a ``DeprecationWarning``.
    """
    import warnings

    import torch

    if seed is not None:
        if generator is not None:
            raise FisherkitError(f"{owner}: pass generator= only (seed= is its deprecated alias), not both")
        warnings.warn(f"{owner}: seed= is deprecated; pass generator=<int seed or torch.Generator>",
                      DeprecationWarning, stacklevel=3)
        generator = seed
    if generator is None:
        generator = default_seed
    if isinstance(generator, torch.Generator):
        if torch.device(generator.device).type != torch.device(device).type:
            raise FisherkitError(f"{owner}: the generator is on {generator.device} but the model is on {device}; "
                                 f"pass a torch.Generator(device={str(device)!r}) or an int seed")
        return generator, int(generator.initial_seed())
    if isinstance(generator, bool) or not isinstance(generator, int) or generator < 0:
        raise FisherkitError(f"{owner}: generator= takes a torch.Generator or a non-negative int seed; got {generator!r}")
    g = torch.Generator(device=device)
    g.manual_seed(int(generator))
    return g, int(generator)
