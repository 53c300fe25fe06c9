"""`fisherkit bench`: the quick fisherkit-only benchmark runs and writes valid JSON (no peers needed)."""

from __future__ import annotations

import json
import math

import pytest

from fisherkit.cli import main


def test_quick_fisherkit_only_writes_json(tmp_path, capsys):
    rc = main(["bench", "--quick", "--models", "M1", "--no-peers", "--no-memory", "--repeats", "1",
               "--samples", "128", "--skip", "lowrank,dense", "--out", str(tmp_path)])
    assert rc == 0
    report = json.loads((tmp_path / "bench-quick.json").read_text())
    assert report["quick"] is True and report["batch"] == 128 and report["dtype"] == "float32"
    assert report["machine"]["threads"] == 1 and "torch" in report["machine"]["versions"]
    (m1,) = report["models"]
    assert m1["model"] == "M1" and m1["samples"] == 128 and m1["params"] == 26_122
    assert m1["epoch_seconds"] > 0
    keys = {r["key"] for r in m1["rows"]}
    assert {"diag_exact", "diag_mc", "diag_emp", "kfac_exact", "kfac_mc", "ekfac", "mv"} <= keys
    assert "dense" not in keys and "lowrank" not in keys  # --skip
    for r in m1["rows"]:
        assert r["library"] == "fisherkit"  # --no-peers
        assert math.isfinite(r["ratio_epoch"]) and r["ratio_epoch"] > 0
        assert r["seconds"] > 0 and r["ratio_epoch"] > 0  # ratio: to an epoch timed right before each run
        if r.get("target_epoch") is not None:
            assert r["met_epoch"] == (r["ratio_epoch"] <= r["target_epoch"])
    assert "fisherkit" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--models", "M9"], "unknown model"),
        (["--repeats", "0"], "--repeats"),
        (["--threads", "0"], "--threads"),
        (["--stream-samples", "-1"], "--stream-samples"),
        (["--samples", "0"], "--samples"),
    ],
)
def test_bad_options_are_one_line_errors(args, message, capsys):
    assert main(["bench", "--quick", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err


def test_out_must_be_a_directory(tmp_path, capsys):
    f = tmp_path / "x.json"
    f.write_text("{}")
    assert main(["bench", "--quick", "--no-peers", "--no-memory", "--out", str(f)]) == 2
    assert "is a file" in capsys.readouterr().err
