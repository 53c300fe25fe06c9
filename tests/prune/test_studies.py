"""The pruning studies end to end on tiny budgets: one-shot vs steps (digits MLP) and the char transformer."""

import sys
from pathlib import Path

import pytest
import torch

from fisherkit.prune import masks
from fisherkit.studies import prune as study

ROOT = Path(__file__).resolve().parents[2]


def test_steps_budget_must_cover_the_fine_tunes_between_steps():
    with pytest.raises(ValueError, match="budget"):
        study.run_steps(seeds=(0,), steps=(1, 4), budget=2)


@pytest.mark.slow  # a 3-epoch MLP, six prune calls with their Fisher passes and fine-tunes (~10 s)
def test_run_steps_records_every_schedule_and_fine_tunes_the_same_budget(monkeypatch):
    epochs = []
    real_train = study.train

    def counting_train(model, X, y, n, **kw):
        if kw.get("guard") is not None:
            epochs.append(n)
        return real_train(model, X, y, n, **kw)

    monkeypatch.setattr(study, "train", counting_train)
    res = study.run_steps(seeds=(0,), targets=(0.8,), methods=("magnitude", "kfac"), steps=(1, 3), budget=2,
                          epochs=3)
    for m in ("magnitude", "kfac"):
        for s in ("1", "3"):
            cell = res["acc"][m]["0.8"][s]
            assert len(cell["pruned"]) == len(cell["final"]) == 1
            assert 0.0 <= cell["pruned"][0] <= 1.0 and 0.0 <= cell["final"][0] <= 1.0
    # per method: steps=1 fine-tunes 2 epochs after; steps=3 one epoch twice between steps and 0 after
    assert epochs == [2, 1, 1, 0, 2, 1, 1, 0]
    text = study.format_steps(res)
    assert "kfac" in text and f"{100 * res['acc']['kfac']['0.8']['1']['final'][0]:5.1f}" in text


@pytest.mark.slow  # a few steps of the char transformer, two prune calls, two tiny fine-tunes (~20 s)
def test_transformer_pruning_benchmark_runs_and_prunes_every_linear_weight():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_merge_prune as bench
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    res = bench.prune_lm(seeds=(0,), sparsities=(0.5,), methods=("magnitude", "kfac"), train_steps=3,
                         fisher_windows=8, finetune_steps=1)
    for m in ("magnitude", "kfac"):
        (acc, loss), = res["acc"][m]["0.5"]["oneshot"]
        assert 0.0 <= acc <= 1.0 and loss > 0
    assert "kfac" in bench.format_lm(res)
    # the benchmark prunes what prune() prunes by default: every nn.Linear weight of the transformer
    from fisherkit.prune import prune

    task = bench._ngd_tasks().TASKS["lm"]()
    net = task.model(0)
    p = prune(net, sparsity=0.5, method="magnitude")
    linear = [n for n, mod in net.named_modules() if isinstance(mod, torch.nn.Linear)]
    assert sorted(masks(p)) == sorted(f"{n}.weight" for n in linear)
