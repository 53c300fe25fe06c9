"""The experiment's building blocks and the ``fisherkit ngd`` command (restricted to stay fast)."""

import json
import math

import pytest

from fisherkit.cli import main
from fisherkit.studies import ngd as ex


def test_first_reach_interpolates_in_log_loss():
    # loss 1 → 0.01 between epochs 1 and 2: the target 0.1 is half-way in log space
    assert ex.first_reach([2.0, 1.0, 0.01], [0.0, 1.0, 3.0], 0.1) == pytest.approx((1.5, 2.0))
    assert ex.first_reach([2.0, 1.0], [0.0, 1.0], 0.5) == (None, None)
    assert ex.first_reach([0.05, 0.01], [0.0, 1.0], 0.1) == (0.0, 0.0)


def test_summary_ratios_and_target():
    runs = {
        "sgd": [{"loss": [2.0, 1.0, 0.5], "seconds": [0, 1, 2]}],
        "adam": [{"loss": [2.0, 0.5, 0.25], "seconds": [0, 2, 4]}],
        "kfac": [{"loss": [2.0, 0.25, 0.1], "seconds": [0, 4, 8]}],
    }
    s = ex.summarise(runs)
    assert s["target"] == 0.5  # max of SGD's (0.5) and Adam's (0.25) final loss
    assert s["table"]["sgd"]["epochs_to_target"] == 2.0 and s["table"]["adam"]["epochs_to_target"] == 1.0
    k = s["table"]["kfac"]
    assert k["epochs_to_target"] == pytest.approx(2 / 3)  # log(2/0.5) / log(2/0.25) of the first epoch
    assert k["epochs_to_target_vs_adam"] == pytest.approx(2 / 3)
    assert k["seconds_to_target_vs_sgd"] == pytest.approx((8 / 3) / 2)


def test_ngd_command_quick_restricted(tmp_path):
    rc = main(["ngd", "--quick", "--methods", "kfac,sgd,adam", "--problems", "classifier", "--epochs", "1",
               "--no-progress", "--out", str(tmp_path)])
    assert rc == 0
    res = json.loads((tmp_path / "results.json").read_text())
    p = res["problems"]["classifier"]
    assert set(p["runs"]) == {"kfac", "sgd", "adam"}
    for runs in p["runs"].values():
        assert len(runs[0]["loss"]) == 2 and all(math.isfinite(v) for v in runs[0]["loss"])
        assert runs[0]["loss"][1] < runs[0]["loss"][0]  # one epoch of any method lowers the loss
    c = p["adam_fisher_correlation"]
    assert -1 <= c["true_fisher"]["pearson"] <= 1 and c["n_params"] == 64 * 64 + 64 + 64 * 10 + 10
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert "| NGD kfac |" in (tmp_path / "table.md").read_text()


@pytest.mark.parametrize("args,match", [(["--methods", "lbfgs"], "lbfgs"), (["--problems", "mnist"], "mnist"),
                                        (["--seeds", "0"], "seeds"), (["--epochs", "0"], "epochs")])
def test_ngd_command_bad_options(args, match, capsys):
    assert main(["ngd", "--quick", "--no-progress", *args]) == 2
    assert match in capsys.readouterr().err


def test_help_has_an_example(capsys):
    assert main(["ngd", "--help"]) == 0
    assert "fisherkit ngd --quick" in capsys.readouterr().out
