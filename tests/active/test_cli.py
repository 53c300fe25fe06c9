"""``fisherkit active`` end to end on tiny settings, and its one-line errors."""

import json

import pytest

from fisherkit.cli import main


def test_active_command_wine_and_csv(tmp_path, capsys):
    rc = main(["active", "--dataset", "wine", "--quick", "--strategies", "random,egl,badge", "--rounds", "2",
               "--epochs", "20", "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "labels to 95%" in out and "egl" in out and "AULC" in out
    res = json.loads((tmp_path / "active_wine.json").read_text())
    assert res["n_labels"] == [6, 9, 12] and set(res["strategies"]) == {"random", "egl", "badge"}
    assert (tmp_path / "active_wine.png").stat().st_size > 1000
    csv = tmp_path / "d.csv"
    rows = ["a,b,cls"] + [f"{i % 7},{(i * 3) % 5},{'x' if i % 2 else 'y'}" for i in range(60)]
    csv.write_text("\n".join(rows))
    rc = main(["active", "--csv", str(csv), "--quick", "--strategies", "entropy,egl", "--rounds", "2",
               "--epochs", "10", "--no-progress"])
    assert rc == 0


def test_active_command_errors(tmp_path, capsys):
    assert main(["active", "--strategies", "egl,oracle", "--quick"]) == 2
    assert "unknown strategy 'oracle'" in capsys.readouterr().err
    assert main(["active", "--dataset", "mnist", "--quick", "--no-progress"]) == 2
    assert "unknown data set" in capsys.readouterr().err
    bad = tmp_path / "nan.csv"
    bad.write_text("a,b,y\n1,2,0\n,3,1\n4,5,0\n")
    assert main(["active", "--csv", str(bad), "--quick", "--no-progress"]) == 2
    assert "NaN" in capsys.readouterr().err
    assert main(["active", "--target", "1.5", "--quick"]) == 2


def test_plots_return_figures():
    import matplotlib.figure

    from fisherkit.active.loop import summarize
    from fisherkit.studies.active_plots import plot_bar, plot_learning_curves

    res = {"n_labels": [5, 10, 15], "target": 0.8, "dataset": "toy", "config": {"seeds": [0, 1], "model": "m"},
           "strategies": {"random": {"acc": [[0.5, 0.7, 0.8], [0.6, 0.7, 0.9]], "select_seconds": [0, 0]},
                          "egl": {"acc": [[0.5, 0.8, 0.9], [0.6, 0.85, 0.9]], "select_seconds": [0, 0]}}}
    fig = plot_learning_curves(res)
    assert isinstance(fig, matplotlib.figure.Figure) and len(fig.axes[0].lines) == 3  # 2 curves + target
    summ = summarize(res, 0.8)
    assert summ["egl"]["labels_to_target"] == pytest.approx([10.0, 9.0])  # exact hit; 5 + 5·(0.8 − 0.6)/(0.85 − 0.6)
    assert isinstance(plot_bar(summ), matplotlib.figure.Figure)
