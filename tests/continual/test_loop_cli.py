"""The training loop on tiny streams, the plots, the command line and its errors."""

import json

import numpy as np
import pytest
import torch

from fisherkit.cli import main
from fisherkit.studies import continual as experiment
from fisherkit.studies import continual_plots as plots
from fisherkit.studies.continual import TrainConfig, run_method
from fisherkit.continual.streams import SplitDigits


def test_task_incremental_loop_ewc_new_heads_and_metrics():
    stream = SplitDigits("task", n_tasks=5, seed=0)
    cfg = TrainConfig(epochs=3, batch_size=128, hidden=(16,), lr=1e-2)
    R = run_method(stream, "ewc", cfg, seed=0, strength=10.0)
    assert R.shape == (5, 5) and np.isnan(R[0, 1]) and np.all(np.isfinite(R[np.tril_indices(5)]))
    assert np.all(R[np.tril_indices(5)] > 0.85)  # 2-way tasks, one head per task: far above chance


def test_class_incremental_loop_with_growing_head_runs_all_methods():
    stream = SplitDigits("class", n_tasks=5, seed=0)
    cfg = TrainConfig(epochs=1, batch_size=256, hidden=(16,))
    for m in ("finetune", "l2", "si", "ewc", "ewc-kfac", "ewc-online", "joint"):
        R = run_method(stream, m, cfg, seed=0, strength=1.0)
        assert np.all(np.isfinite(R[np.tril_indices(5)])), m


def test_joint_task_incremental_uses_every_head():
    stream = SplitDigits("task", n_tasks=2, seed=0)
    R = run_method(stream, "joint", TrainConfig(epochs=4, batch_size=64, hidden=(16,), lr=1e-2), seed=0)
    assert R[1, 0] > 0.9 and R[1, 1] > 0.9


def test_run_stream_quick_and_plots(tmp_path):
    res = experiment.run_stream("split-domain", ["finetune", "ewc"], quick=True, seed=0, epochs=1, n_tasks=2)
    assert set(res["methods"]) == {"finetune", "ewc"} and res["scenario"] == "domain"
    r = res["methods"]["ewc"]
    assert 0 <= r["mean"]["acc"] <= 1 and r["std"]["acc"] == 0.0
    for fig in (plots.plot_accuracy_matrices(res), plots.plot_task_curves(res)):
        fig.savefig(tmp_path / "f.png")
        assert (tmp_path / "f.png").stat().st_size > 1000
    sweep = experiment.lambda_sweep("split-domain", ["ewc"], [1.0, 10.0], epochs=1, n_tasks=2)
    assert set(sweep["methods"]["ewc"]) == {1.0, 10.0}
    plots.plot_lambda_sweep(sweep, reference={"finetune": 0.5})
    assert "λ=10" in experiment.format_sweep(sweep)


def test_cli_ewc_writes_results_and_plots(tmp_path, capsys):
    rc = main(["ewc", "--stream", "split-task", "--methods", "finetune,ewc", "--n-tasks", "2", "--epochs", "1",
               "--sweep", "1,100", "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "finetune" in out and "ACC" in out and "λ sweep" in out
    data = json.loads((tmp_path / "results.json").read_text())
    assert set(data) == {"run", "sweep"}
    for name in ("ewc_matrices", "ewc_curves", "ewc_sweep"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000


@pytest.mark.parametrize("args, match", [
    (["--methods", "replay"], "unknown method"),
    (["--stream", "mnist"], "unknown stream"),
    (["--seeds", "0"], "--seeds"),
    (["--sweep", "1,abc"], "comma-separated"),
    (["--sweep", "-1"], "≥ 0"),
    (["--strength", "ewc"], "method=value"),
    (["--epochs", "0"], "--epochs"),
])
def test_cli_errors(args, match, capsys):
    assert main(["ewc", "--n-tasks", "2", "--no-progress", *args]) == 2
    assert match in capsys.readouterr().err


def test_cli_help_has_example(capsys):
    assert main(["ewc", "--help"]) == 0
    assert "Example: fisherkit ewc" in capsys.readouterr().out


def test_cli_compare_fishers(tmp_path, capsys):
    rc = main(["ewc", "--stream", "split-domain", "--methods", "finetune", "--n-tasks", "2", "--epochs", "1",
               "--compare-fishers", "--sweep", "10", "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert set(data["fishers"]["methods"]) == {"ewc", "ewc-mc", "ewc-empirical", "ewc-sqbatch"}
    assert (tmp_path / "ewc_fishers.png").stat().st_size > 1000
