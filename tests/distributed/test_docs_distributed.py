"""The two scripts in docs/distributed.md, run as written with torchrun on 2 CPU processes (slow)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "distributed.md"


def _scripts():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    return [b for b in blocks if "torchrun" in b.splitlines()[0]]


@pytest.mark.slow
@pytest.mark.parametrize("i", range(2))
def test_doc_script_runs_under_torchrun(i, tmp_path):
    scripts = _scripts()
    assert len(scripts) == 2
    path = tmp_path / f"script{i}.py"
    path.write_text("import torch\ntorch.set_num_threads(1)\n" + scripts[i])
    torchrun = Path(sys.executable).with_name("torchrun")
    res = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", str(path)], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    if i == 0:
        n, trace = res.stdout.split()[-2:]
        assert int(n) == 1000 and float(trace) > 0
