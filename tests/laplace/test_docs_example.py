"""docs/laplace.md's example runs as written (in a temporary folder: it saves a file)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_docs_example_runs(tmp_path, monkeypatch, capsys):
    text = (ROOT / "docs" / "laplace.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "docs/laplace.md has no python example"
    monkeypatch.chdir(tmp_path)
    ns = {"__name__": "__docs__"}
    exec(compile(blocks[0], "docs/laplace.md", "exec"), ns)
    out = capsys.readouterr().out
    assert "rotated Laplace" in out
    # the saved posterior reads back to the same evidence (reference: the object that wrote it)
    import fisherkit as fk

    back = fk.laplace.load(tmp_path / "laplace.safetensors", ns["net"])
    assert float(back.log_marginal_likelihood()) == float(ns["la"].log_marginal_likelihood())
