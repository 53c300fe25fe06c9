"""docs/stats.md's runnable example runs, and the docstring examples of fisherkit.stats hold."""

import doctest
import importlib
import os
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "stats.md"


def test_runnable_example_in_docs(tmp_path, monkeypatch, capsys):
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Runnable example", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(DOC), "exec"), {})
    out = capsys.readouterr().out
    assert "[0.6]" in out and "0.1549" in out and "0.04898" in out
    assert (tmp_path / "binomial_loglik.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("module", ["__init__", "family", "information", "mle", "custom", "glm", "plots", "nonexponential"])
def test_docstring_examples(module, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = "fisherkit.stats" if module == "__init__" else f"fisherkit.stats.{module}"
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
