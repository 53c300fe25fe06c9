"""`fisherkit merge` end to end on one seed with two cheap variants: table rows and JSON agree."""

import json

import pytest

from fisherkit.cli import main


@pytest.mark.slow  # pre-training + two fine-tunes + a Fisher pass: ~10-25 s on 2 shared cores
def test_merge_command(tmp_path, capsys):
    rc = main(["merge", "--variants", "average,diag-normalized", "--seeds", "1", "--ft-epochs", "2",
               "--out", str(tmp_path)])
    assert rc == 0
    text = capsys.readouterr().out
    res = json.loads((tmp_path / "results.json").read_text())
    for v in ("average", "diag-normalized"):
        a = res["acc"][v][0]
        assert len(a) == 2 and all(0.5 < x <= 1 for x in a)  # two tasks; both far above chance (10 %)
        assert f"{100 * (a[0] + a[1]) / 2:.1f}" in text
    assert (tmp_path / "merge_variants.png").exists()


def test_merge_command_bad_input(capsys):
    assert main(["merge", "--variants", "median"]) == 2
    assert "unknown variant" in capsys.readouterr().err


@pytest.mark.slow  # pre-training, two fine-tunes, four Fisher passes, one KFAC dense solve (~1 min)
def test_report_section_numbers_are_consistent():
    from fisherkit.studies.merge import REPORT_QUICK, report

    sec = report(quick=True, seed=0)
    n = sec["numbers"]
    assert set(n["mean_task_accuracy"]) == set(REPORT_QUICK)
    assert n["delta_vs_average_per_seed"]["average"] == [0.0]
    assert n["extrapolation"]["average"] == pytest.approx(0.0, abs=1e-12)
    assert n["extrapolation"]["diag"] <= 1 + 1e-9  # a per-coordinate weighted average never leaves the segment
    assert f"{100 * n['mean_task_accuracy']['average']:.1f}" in sec["text"]
