"""The demo report: plots and numbers for each capability, gathered into one HTML page.

``run_demo(out, quick=True)`` runs the sections (see ``registry.ordered_sections()``) and writes
``out/index.html`` (self-contained), ``out/results.json`` and the plots as PNG files.
Each section is a function ``(Context) -> SectionResult`` registered with ``@section``.
"""

from .registry import Context, SectionResult, ordered_sections, resolve, run_section, section
from .tour import DemoRun, run_demo

__all__ = ["Context", "SectionResult", "DemoRun", "ordered_sections", "resolve", "run_demo", "run_section", "section"]
