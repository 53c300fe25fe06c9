"""`python -m fisherkit ...` behaves like the `fisherkit` command (issue 18).

References: `fisherkit.cli.main` — what the console script from pyproject's [project.scripts]
calls — run in this process on the same arguments (same output, same exit code); and, in the
slow run, the installed console script itself. Each subprocess imports torch (≈ 5 s), so the default
run starts only one."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fisherkit.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _run(argv):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)


def test_python_dash_m_help_is_the_command_help(capsys):
    out = _run([sys.executable, "-m", "fisherkit", "--help"])
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Usage: fisherkit ")
    for command in ("stats", "fisher", "demo", "ewc", "ngd", "active", "bench"):
        assert f"  {command} " in out.stdout, command
    assert main(["--help"]) == 0
    assert out.stdout.split() == capsys.readouterr().out.split()  # same text (up to terminal wrapping)


@pytest.mark.slow
def test_python_dash_m_reports_a_user_mistake_like_the_command(capsys):
    out = _run([sys.executable, "-m", "fisherkit", "stats", "poisson", "--data", "3,-1"])
    assert out.returncode == 2
    assert out.stderr == "error: Poisson: value -1.0 at index 1 is outside the support (non-negative integer counts); 1 such value(s) in total\n"
    assert main(["stats", "poisson", "--data", "3,-1"]) == 2
    assert capsys.readouterr().err == out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("args", [["--help"], ["stats", "poisson", "--data", "3,1,4,1,5"], ["stats", "poisson", "--data", "x"]])
def test_python_dash_m_matches_the_installed_console_script(args):
    script = Path(sys.executable).parent / ("fisherkit.exe" if os.name == "nt" else "fisherkit")
    script = str(script) if script.exists() else shutil.which("fisherkit")
    if script is None:
        pytest.fail("the `fisherkit` console script is not installed; run `pip install -e .[test]`")
    module, ref = _run([sys.executable, "-m", "fisherkit", *args]), _run([script, *args])
    assert (module.returncode, module.stdout, module.stderr) == (ref.returncode, ref.stdout, ref.stderr)
