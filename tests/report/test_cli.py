"""The demo command's surface: help with an example, one-line errors (exit 2) for user mistakes,
--only, and a failing section recorded in the page and results.json without killing the report."""

from __future__ import annotations

import json

import pytest

from fisherkit.cli import main
from fisherkit.commands.demo import SECTION_NAMES
from fisherkit.errors import FisherkitError
from fisherkit.report import SectionResult, resolve, run_demo
from fisherkit.report.figures import figure
from fisherkit.report.registry import SECTIONS, SectionSpec, ordered_sections


def test_help_has_an_example_and_every_section(capsys):
    assert main(["demo", "--help"]) == 0
    text = capsys.readouterr().out
    assert "Example: fisherkit demo --quick" in text
    for opt in ("--quick", "--out", "--seed", "--only", "--no-progress"):
        assert opt in text
    listed = ", ".join(f"{i} {s.key}" for i, s in enumerate(ordered_sections(), start=1))
    assert SECTION_NAMES == listed


@pytest.mark.parametrize(
    "args, message",
    [
        (["--only", "bogus"], "unknown section 'bogus'"),
        (["--only", "9"], "unknown section '9'"),
        (["--seed", "-1"], "--seed must be a non-negative integer"),
        (["--seed", "abc"], "Invalid value for '--seed'"),
        (["--frobnicate"], "No such option"),
    ],
)
def test_user_mistakes_end_with_one_line_and_exit_2(tmp_path, capsys, args, message):
    assert main(["demo", "--out", str(tmp_path / "r"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert err.strip().count("\n") == 0
    assert not (tmp_path / "r" / "index.html").exists()


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("x")
    assert main(["demo", "--out", str(f), "--only", "1"]) == 2
    err = capsys.readouterr().err
    assert "is a file" in err and err.count("\n") == 1


def test_resolve_accepts_names_numbers_aliases_and_commas():
    keys = [s.key for s in resolve(["6,likelihood", "ngd", "1"])]
    assert keys == ["likelihood", "natural_gradient", "spectrum"]  # report order, no duplicates
    assert [s.key for s in resolve(None)] == [s.key for s in ordered_sections()]
    with pytest.raises(FisherkitError, match="choose from: 1 likelihood"):
        resolve(["nope"])


def test_only_runs_the_chosen_section(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["demo", "--quick", "--only", "likelihood", "--out", str(out), "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["sections"]) == ["likelihood"] and results["ok"]
    printed = capsys.readouterr().out
    assert "0.155" in printed and "0.049" in printed and "index.html" in printed  # the terminal summary table


def _broken(ctx):
    raise RuntimeError("deliberately broken section")


def _half_broken(ctx):
    fig, ax = figure()
    ax.plot([0, 1], [0, float("nan")])
    return SectionResult(title="half", numbers={"good": 1.0, "bad": float("nan")}, figures={"line": fig})


def test_a_failing_section_is_recorded_and_the_rest_still_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(SECTIONS, "broken", SectionSpec("broken", "0. Broken", 0, _broken))
    monkeypatch.setitem(SECTIONS, "half", SectionSpec("half", "0.5 Half", 0, _half_broken))
    out = tmp_path / "r"
    run = run_demo(out, quick=True, only=["broken", "half", "likelihood"], progress=False)
    assert run.failed == ["broken", "half"] and not run.ok
    results = json.loads((out / "results.json").read_text())  # strict JSON: NaN written as "nan"
    assert results["ok"] is False
    assert "deliberately broken section" in results["sections"]["broken"]["error"]
    assert "non-finite numbers: bad" in results["sections"]["half"]["error"]
    assert results["sections"]["half"]["numbers"]["bad"] == "nan"
    assert results["sections"]["likelihood"]["ok"]
    page = (out / "index.html").read_text()
    assert page.count("This section failed") == 2 and "deliberately broken section" in page
    # and the command says so with a non-zero exit
    assert main(["demo", "--quick", "--only", "broken", "--out", str(out), "--no-progress"]) == 1
    assert "1 section(s) failed" in capsys.readouterr().out


def test_progress_bar_iterates_everything_and_seeds_are_reproducible():
    import io

    from rich.console import Console

    from fisherkit.report import Context

    ctx = Context(progress=True, console=Console(file=io.StringIO(), force_terminal=True), seed=3)
    assert list(ctx.track(range(7), description="steps")) == list(range(7))
    assert ctx.rng(1).random() == Context(seed=3).rng(1).random() != ctx.rng(2).random()


def _leaf_commands():
    import typer

    from fisherkit.cli import app

    def walk(c, path):
        subs = getattr(c, "commands", None)
        if subs:
            for name, sub in subs.items():
                yield from walk(sub, [*path, name])
        else:
            yield path

    return list(walk(typer.main.get_command(app), []))


@pytest.mark.parametrize("path", _leaf_commands(), ids=" ".join)
def test_every_subcommand_has_help_with_an_example_and_one_line_errors(path, capsys):
    assert main([*path, "--help"]) == 0
    assert "Example" in capsys.readouterr().out
    assert main([*path, "--no-such-option"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_docs_index_links_one_existing_page_per_capability():
    import re
    from pathlib import Path

    docs = Path(__file__).resolve().parents[2] / "docs"
    links = re.findall(r"\]\(([^)#]+\.md)\)", (docs / "index.md").read_text(encoding="utf-8"))
    expected = {"demo.md", "stats.md", "fisher.md", "natural_gradient.md", "continual.md", "active_learning.md",
                "performance.md", "distributed.md"}
    assert expected <= set(links)
    missing = [x for x in links if not (docs / x).is_file()]
    assert not missing, f"docs/index.md links to missing pages: {missing}"
