"""Modules called on one row shared by the whole batch (position embeddings looked up with ids [1, T],
as HF GPT-2/BERT do): kept off the torch.func path by expanding their output to the batch, when that
leaves the model's output unchanged — against float64 brute force (tests/reference.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fisherkit as fk
from fisherkit.engine import collect
from fisherkit.engine.units import make_plan, settle

from reference import brute_fisher


class PosModel(nn.Module):
    def __init__(self, squeeze=False):
        super().__init__()
        torch.manual_seed(0)
        self.tok, self.pos = nn.Embedding(13, 6), nn.Embedding(9, 6)
        self.mix, self.head = nn.Linear(6, 6), nn.Linear(6, 3)
        self.squeeze = squeeze

    def forward(self, ids):
        p = self.pos(torch.arange(ids.shape[1]).unsqueeze(0))  # [1, T, d], broadcast over the batch
        if self.squeeze:  # uses the row as a [T, d] tensor: an expanded output would change the result's shape
            p = p[0]
        h = torch.tanh(self.mix(self.tok(ids) + p))
        return self.head(h.mean(1))


def data():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 13, (7, 5), generator=g), torch.randint(0, 3, (7,), generator=g)


@pytest.mark.parametrize("kind", ["exact", "empirical", "mc"])
def test_position_embedding_is_per_sample_without_torch_func(kind, monkeypatch):
    m = PosModel().double().eval()
    X, y = data()
    plan = settle(m, make_plan(m, dict(m.named_parameters()), elementwise=True), X)
    assert plan.func_names == [] and [u.broadcast for u in plan.elem_units if u.module is m.pos] == [True]

    def refuse(*a, **k):
        raise AssertionError("torch.func per-sample pass used")

    monkeypatch.setattr(collect, "persample_grads", refuse)
    F = fk.fisher(m, (X, y), kind=kind, structure="dense", batch_size=4, generator=0).to_dense()
    if kind == "mc":  # the same label draws through the torch.func path (FISHERKIT_FORCE_FUNC) as reference
        monkeypatch.undo()
        monkeypatch.setenv("FISHERKIT_FORCE_FUNC", "1")
        ref = fk.fisher(m, (X, y), kind=kind, structure="dense", batch_size=4, generator=0).to_dense()
    else:
        ref = brute_fisher(m, X, y, "categorical", kind)
    assert float((F - ref).norm() / ref.norm()) < 1e-10


def test_a_shared_row_the_model_reshapes_goes_to_torch_func():
    m = PosModel(squeeze=True).double().eval()
    X, y = data()
    plan = settle(m, make_plan(m, dict(m.named_parameters()), elementwise=True), X)
    assert "pos.weight" in plan.func_names
    D = fk.fisher(m, (X, y), structure="diag").diag()
    ref = brute_fisher(m, X, y, "categorical", "exact").diagonal()
    assert float((D - ref).norm() / ref.norm()) < 1e-10
