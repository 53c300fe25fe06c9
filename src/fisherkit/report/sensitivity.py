"""Sections 7–8 — what the Fisher says about θ itself:

7. Laplace: calibrated predictions from the posterior N(θ̂, (N·F + P)⁻¹) (``fisherkit.studies.laplace``);
8. the sensitivity of θ put to work: Fisher-weighted merging and OBS pruning (the merge and prune studies).

As for sections 3–5, the report calls the studies' public functions and shows what they return.
"""

from __future__ import annotations

from .applications import call, find
from .registry import Context, SectionResult, section


@section("laplace", "7. Laplace: calibrated predictions", order=7, aliases=("la", "uncertainty"))
def laplace_section(ctx: Context) -> SectionResult:
    mods = ("fisherkit.studies.laplace",)
    results = call(find(mods, "run_calibration"), ctx, methods=("map", "ll_kfac", "kfac"), n_members=1,
                   angles=(0, 30, 45) if ctx.quick else (0, 15, 30, 45, 60),
                   heldout_class=False)  # the held-out-class refits double the cost: the study has them
    numbers, text, headline = find(mods, "calibration_summary")(results)
    return SectionResult(title="7. Laplace: calibrated predictions", text=text, numbers=numbers,
                         figures={"laplace_reliability": find(mods, "plot_reliability_diagrams")(results)},
                         headline=headline)


@section("sensitivity", "8. Sensitivity of θ: Fisher merging and OBS pruning", order=8,
         aliases=("merge", "prune"))
def sensitivity_section(ctx: Context) -> SectionResult:
    parts = []
    for mods in (("fisherkit.studies.merge",),
                 ("fisherkit.studies.prune",)):
        parts.append(call(find(mods, "report"), ctx))
    text = "".join(f"<h3>{p['title']}</h3>{p['text']}" for p in parts)
    numbers = {p["title"]: p["numbers"] for p in parts}
    figures = {k: v for p in parts for k, v in p["figures"].items()}
    return SectionResult(title="8. Sensitivity of θ: Fisher merging and OBS pruning", text=text, numbers=numbers,
                         figures=figures, headline="; ".join(p["headline"] for p in parts))
