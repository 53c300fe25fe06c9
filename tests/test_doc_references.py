"""The docs cite only what a reader of the repository can open: no file outside it (no absolute
/work/... paths, no PEERS.md, which lives outside the repository), and every relative Markdown link
of the README and docs/ to a page or source file resolves to a file in the repository."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "benchmarks").glob("*.py")),
        *sorted((ROOT / "src").rglob("*.py"))]


def test_no_reference_outside_the_repository():
    bad = [f"{p.relative_to(ROOT)}:{i}: {line.strip()[:80]}" for p in TEXT
           for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
           if "PEERS.md" in line or ("/work/" in line and p.suffix == ".md")]
    assert not bad, bad


def test_relative_links_resolve():
    bad = []
    for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", p.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:") or not target.endswith((".md", ".py", ".toml")):
                continue  # pages and source files (images belong to the page that makes them; math is not a link)
            if not (p.parent / target).exists():
                bad.append(f"{p.relative_to(ROOT)} -> {target}")
    assert not bad, bad
