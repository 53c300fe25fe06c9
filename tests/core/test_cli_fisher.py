"""`fisherkit fisher` as a user runs it: numbers that agree with the library, a valid PNG, one-line errors."""

import json

import torch

from fisherkit.cli import main


def test_fisher_command_prints_and_writes(tmp_path, capsys):
    torch.set_num_threads(1)
    png, js = tmp_path / "spec.png", tmp_path / "f.json"
    rc = main(["fisher", "--hidden", "8", "--epochs", "5", "--top", "3", "--plot", str(png), "--json", str(js),
               "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "top eigenvalues" in out and "kfac" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = json.loads(js.read_text())
    assert res["parameters"] == 64 * 8 + 8 + 8 * 10 + 10
    # the trace is the sum of the spectrum, and EKFAC is no further from dense than KFAC
    assert abs(sum(res["spectrum"]) - res["trace"]) < 1e-4 * res["trace"]
    assert res["relative_error"]["ekfac"] <= res["relative_error"]["kfac"] + 1e-6
    assert all(0 <= e <= 1.5 for e in res["relative_error"].values())


def test_fisher_command_user_mistake(capsys):
    assert main(["fisher", "--kind", "true"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--kind" in err and len(err.splitlines()) == 1
