"""The README's tour and docs/fisher.md's example run as written (a newcomer pastes them)."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks(path: Path, after: str = "") -> list[str]:
    text = path.read_text()
    if after:
        text = text[text.index(after):]
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def _run(code: str, tmp_path: Path) -> None:
    script = tmp_path / "snippet.py"
    script.write_text("import torch\ntorch.set_num_threads(1)\n" + code)
    res = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert res.returncode == 0, res.stderr[-2000:]


def test_readme_tour_runs(tmp_path):
    (tour,) = _python_blocks(ROOT / "README.md", after="## A short tour")[:1]
    assert "fk.fisher" in tour and "fk.stats.fit" in tour
    _run(tour + "\nassert abs(float(res.se[0]) - (0.6 * 0.4 / 10) ** 0.5) < 1e-9\n", tmp_path)


def test_fisher_doc_example_runs(tmp_path):
    (example,) = _python_blocks(ROOT / "docs" / "fisher.md")
    _run(example, tmp_path)
    assert (tmp_path / "fisher.safetensors").exists()
