"""`fisherkit merge` end to end on one seed with two cheap families: table rows and JSON agree."""

import json
import statistics

import pytest

from fisherkit.cli import main


@pytest.mark.slow  # pre-training + two fine-tunes + a Fisher pass: ~10-25 s on 2 shared cores
def test_merge_command(tmp_path, capsys):
    rc = main(["merge", "--setting", "split", "--families", "average,diag", "--seeds", "1", "--ft-epochs", "2",
               "--out", str(tmp_path)])
    assert rc == 0
    text = capsys.readouterr().out
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["setting"] == "split" and res["chosen"]["average"] == ["average"]
    for f in ("average", "diag"):
        v = res["chosen"][f][0]
        a = res["acc"][v][0]["test"]
        assert len(a) == 2 and all(0.5 < x <= 1 for x in a)  # two tasks; both far above chance (10 %)
        assert f"{100 * statistics.mean(a):.1f}" in text
    # the chosen variant is the best on validation (never on test)
    best_val = max(statistics.mean(res["acc"][v][0]["val"]) for v in res["variants"] if v.startswith("diag-"))
    assert statistics.mean(res["acc"][res["chosen"]["diag"][0]][0]["val"]) == best_val
    assert (tmp_path / "merge_split.png").exists()


def test_merge_command_bad_input(capsys):
    assert main(["merge", "--families", "median"]) == 2
    assert "unknown famil" in capsys.readouterr().err
    assert main(["merge", "--setting", "rotated"]) == 2
    assert "unknown setting" in capsys.readouterr().err


@pytest.mark.slow  # pre-training, three fine-tunes, the Fisher passes and 25 merges (~2-4 min)
def test_report_section_numbers_are_consistent():
    from fisherkit.studies.merge import REPORT_QUICK, report

    sec = report(quick=True, seed=0)
    n = sec["numbers"]
    assert set(REPORT_QUICK) <= set(n["mean_task_accuracy"])
    assert n["delta_vs_average_per_seed"]["average"] == [0.0]
    assert n["extrapolation"]["average"] == pytest.approx(0.0, abs=1e-12)
    assert n["extrapolation"]["diag"] <= 3 ** 0.5 + 1e-9  # a per-coordinate convex combination: ≤ √k
    assert f"{100 * n['mean_task_accuracy']['average']:.1f}" in sec["text"]
