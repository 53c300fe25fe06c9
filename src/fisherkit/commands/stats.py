"""``fisherkit stats``: maximum likelihood, standard errors, intervals and Fisher information.

Examples::

    fisherkit stats binomial --successes 6 --trials 10 --plot out.png --compare 60/100
    fisherkit stats poisson --data 3,1,4,1,5
    fisherkit stats normal --data 2.1,1.9,2.5,2.2 --cov-type observed
    fisherkit stats cauchy --data 2.1,1.9,2.5,2.2,1.7,30 --cov-type observed

Data are given on the command line (``--data``), never read from a file: separators may be commas,
semicolons or spaces, and "0" and "0.0" are the same number.
"""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from ..errors import FisherkitError
from ..stats import families as F
from ..stats.mle import COV_TYPES, BoundaryWarning, fit
from ..stats.nonexponential import Cauchy, Logistic, Weibull

DATA_FAMILIES = {
    "bernoulli": (F.Bernoulli, "0/1 outcomes", "1,0,1,1,0,1"),
    "poisson": (F.Poisson, "non-negative counts", "3,1,4,1,5"),
    "geometric": (F.Geometric, "trials up to the first success (1, 2, ...)", "1,3,2,5,1"),
    "exponential": (F.Exponential, "positive waiting times", "0.5,1.2,0.3,2.2"),
    "normal": (F.Normal, "real numbers", "2.1,1.9,2.5,2.2,1.7"),
    "gamma": (F.Gamma, "positive numbers", "0.8,1.9,2.5,1.2,3.1"),
    "beta": (F.Beta, "numbers in (0, 1)", "0.2,0.35,0.6,0.41,0.3"),
    # not exponential families: --cov-type observed and expected differ at the MLE
    "logistic": (Logistic, "real numbers", "2.1,1.9,2.5,2.2,1.7,3.0"),
    "cauchy": (Cauchy, "real numbers (heavy-tailed)", "2.1,1.9,2.5,2.2,1.7,30.0"),
    "weibull": (Weibull, "positive lifetimes", "0.8,1.9,2.5,1.2,3.1"),
}


def parse_numbers(text: str, option: str = "--data") -> np.ndarray:
    """'3,1,4 1;5' -> array([3., 1., 4., 1., 5.]); a FisherkitError names the bad token."""
    tokens = [t for t in re.split(r"[,\s;]+", text.strip()) if t]
    if not tokens:
        raise FisherkitError(f"{option} is empty; give comma-separated numbers, e.g. {option} 3,1,4")
    out = []
    for i, t in enumerate(tokens):
        try:
            out.append(float(t))
        except ValueError:
            raise FisherkitError(f"{option}: item {i} ({t!r}) is not a number") from None
    return np.array(out)


def parse_fraction(text: str) -> tuple[int, int]:
    """'60/100' -> (60, 100)."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m:
        raise FisherkitError(f"--compare expects SUCCESSES/TRIALS such as 60/100, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def _fit_quietly(family, data, cov_type):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", BoundaryWarning)
        res = fit(family, data, cov_type=cov_type)
    return res, [str(w.message) for w in caught if issubclass(w.category, BoundaryWarning)]


def _table(res, alpha: float, title: str) -> Table:
    level = f"{1 - alpha:.0%}"
    table = Table(title=title, title_justify="left")
    for col in ("parameter", "estimate", "SE", f"Wald {level}", f"profile {level}", "I(θ̂) per obs", "n·I(θ̂)"):
        table.add_column(col, justify="right" if col != "parameter" else "left")
    prof = res.conf_int(alpha, "profile")
    wald = None if res.boundary else res.conf_int(alpha, "wald")
    for j, name in enumerate(res.param_names):
        info = res.expected_information[j, j] / res.n
        table.add_row(
            name,
            f"{res.params[j]:.6g}",
            "undefined (boundary)" if res.boundary else f"{res.se[j]:.4g}",
            "undefined (boundary)" if wald is None else f"[{wald[j, 0]:.4g}, {wald[j, 1]:.4g}]",
            f"[{prof[j, 0]:.4g}, {prof[j, 1]:.4g}]",
            "∞ (boundary)" if res.boundary else f"{info:.4g}",
            "∞ (boundary)" if res.boundary else f"{res.expected_information[j, j]:.4g}",
        )
    return table


def _report(console, family, data, alpha, cov_type, plot, compare_pairs, label):
    res, notes = _fit_quietly(family, data, cov_type)
    console.print(_table(res, alpha, f"{label}   ({res.n} observation(s), log-likelihood = {res.loglik:.6g}, "
                                     f"cov_type = {cov_type})"))
    for note in notes:
        console.print(f"note: {note}")
    if family.num_params > 1 and not res.boundary:
        console.print("Fisher information per observation I(θ̂):")
        console.print(np.array2string(res.expected_information / res.n, precision=5))
    for fam2, data2, label2 in compare_pairs:
        res2, notes2 = _fit_quietly(fam2, data2, cov_type)
        console.print(_table(res2, alpha, f"compare: {label2}   ({res2.n} observation(s), log-likelihood = {res2.loglik:.6g})"))
        for note in notes2:
            console.print(f"note: {note}")
        if not (res.boundary or res2.boundary):
            ratio = res.se / res2.se
            console.print("sharpening: SE ratio " + ", ".join(f"{n} {r:.3g}x" for n, r in zip(res.param_names, ratio))
                          + f"  (total Fisher information ratio {res2.expected_information[0, 0] / res.expected_information[0, 0]:.3g})")
    if plot is not None:
        from ..stats.plots import plot_loglik

        fig = plot_loglik(family, data, compare=[(f2, d2) for f2, d2, _ in compare_pairs] or None, alpha=alpha,
                          labels=[label] + [lab for _, _, lab in compare_pairs])
        try:
            fig.savefig(plot, dpi=110)
        except OSError as e:
            raise FisherkitError(f"cannot write the plot to {plot}: {e}") from None
        console.print(f"plot written to {plot}")


def _check_common(alpha: float, cov_type: str) -> None:
    if not 0 < alpha < 1:
        raise FisherkitError(f"--alpha must be between 0 and 1, got {alpha}")
    if cov_type not in COV_TYPES:
        raise FisherkitError(f"--cov-type must be one of {', '.join(COV_TYPES)}, got {cov_type!r}")


def _console() -> Console:
    return Console(file=sys.stdout, width=130, highlight=False)


ALPHA = typer.Option(0.05, "--alpha", help="1 − confidence level of the intervals.")
COV = typer.Option("expected", "--cov-type", help="expected (default) | observed | opg | sandwich.")
PLOT = typer.Option(None, "--plot", help="Write the log-likelihood and its Fisher quadratic approximation to this PNG.")


def register(app: typer.Typer) -> None:
    """Add the ``stats`` command group to ``app``."""
    stats_app = typer.Typer(
        help="Maximum likelihood with Fisher-information standard errors, Wald and profile intervals.\n\n"
        "Example: fisherkit stats binomial --successes 6 --trials 10 --compare 60/100",
        no_args_is_help=True,
    )

    @stats_app.command(
        "binomial",
        help="Successes out of n trials: p̂, SE = √(p̂(1−p̂)/n), intervals, Fisher information n/(p(1−p)).\n\n"
        "Example: fisherkit stats binomial --successes 6 --trials 10 --compare 60/100",
    )
    def binomial(
        successes: int = typer.Option(..., "--successes", help="Number of successes."),
        trials: int = typer.Option(..., "--trials", help="Number of trials n."),
        compare: Optional[str] = typer.Option(None, "--compare", help="A second sample SUCCESSES/TRIALS, e.g. 60/100."),
        alpha: float = ALPHA,
        cov_type: str = COV,
        plot: Optional[Path] = PLOT,
    ) -> None:
        _check_common(alpha, cov_type)
        pairs = []
        if compare is not None:
            k2, n2 = parse_fraction(compare)
            pairs.append((F.Binomial(n2), [k2], f"{k2}/{n2} successes"))
        _report(_console(), F.Binomial(trials), [successes], alpha, cov_type, plot, pairs,
                f"Binomial: {successes}/{trials} successes")

    for name, (cls, what, example) in DATA_FAMILIES.items():
        _add_data_command(stats_app, name, cls, what, example)

    app.add_typer(stats_app, name="stats")


def _add_data_command(stats_app, name, cls, what, example):
    family = cls()

    def command(
        data: str = typer.Option(..., "--data", help=f"Comma-separated {what}."),
        compare: Optional[str] = typer.Option(None, "--compare", help="A second comma-separated sample to overlay."),
        alpha: float = ALPHA,
        cov_type: str = COV,
        plot: Optional[Path] = PLOT,
    ) -> None:
        _check_common(alpha, cov_type)
        pairs = [] if compare is None else [(family, parse_numbers(compare, "--compare"), "second sample")]
        _report(_console(), family, parse_numbers(data), alpha, cov_type, plot, pairs, family.name)

    params = ", ".join(family.param_names)
    stats_app.command(
        name,
        help=f"{family.name} ({params}) fitted to {what}.\n\nExample: fisherkit stats {name} --data {example}",
    )(command)
