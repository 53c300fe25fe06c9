"""The quick demo's duration is stated one way in the README, docs/demo.md and `fisherkit demo --help`
(measured: docs/demo.md gives the numbers behind it)."""

import re
from pathlib import Path

from fisherkit.cli import main

ROOT = Path(__file__).resolve().parents[2]
CLAIM = "about a minute on 2 CPU cores"


def _durations(text: str) -> set[str]:
    """Every duration phrase said of the quick demo in ``text``."""
    return set(re.findall(r"(?:about|≤|under|within)\s+(?:a|an|\d+)\s+minutes?", text))


def test_readme_docs_and_help_state_the_same_duration(capsys):
    assert main(["demo", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    readme = (ROOT / "README.md").read_text()
    demo_doc = (ROOT / "docs" / "demo.md").read_text()
    quick_lines = [line for line in (readme + "\n" + demo_doc).splitlines() if "--quick" in line]
    for text in [help_text, *quick_lines]:
        assert _durations(text) <= {"about a minute"}, text
    assert CLAIM in help_text and CLAIM in " ".join(readme.split()) and CLAIM in demo_doc
