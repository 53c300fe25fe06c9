"""Modules called on input shared by the whole batch — one row (position embeddings looked up with ids
[1, T], as HF GPT-2/BERT do) or no samples' dimension at all (``pos(torch.arange(T))``, nanoGPT-style) —
kept off the torch.func path by expanding their output to the batch, when that leaves the model's output
unchanged and per sample — against float64 brute force (tests/reference.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fisherkit as fk
from fisherkit.engine import collect
from fisherkit.engine.units import make_plan, settle

from reference import brute_fisher


class PosModel(nn.Module):
    def __init__(self, squeeze=False, ids="row"):
        super().__init__()
        self.ids = ids
        torch.manual_seed(0)
        self.tok, self.pos = nn.Embedding(13, 6), nn.Embedding(9, 6)
        self.mix, self.head = nn.Linear(6, 6), nn.Linear(6, 3)
        self.squeeze = squeeze

    def forward(self, ids):
        t = torch.arange(ids.shape[1])
        if self.ids == "new":  # [T, d], broadcast over the batch
            p = self.pos(t)
            if self.squeeze:  # a reduction over its first dimension: an expanded output would change it
                p = p.mean(0)
            return self.head(torch.tanh(self.mix(self.tok(ids) + p)).mean(1))
        p = self.pos(t.unsqueeze(0))  # [1, T, d], broadcast over the batch
        if self.squeeze:  # uses the row as a [T, d] tensor: an expanded output would change the result's shape
            p = p[0]
        h = torch.tanh(self.mix(self.tok(ids) + p))
        return self.head(h.mean(1))


def plan_of(m, X):
    return settle(m, make_plan(m, dict(m.named_parameters()), elementwise=True), X)


def shared_modes(plan, module):
    return [u.broadcast for u in plan.elem_units if u.module is module]


def refuse_torch_func(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("torch.func per-sample pass used")

    monkeypatch.setattr(collect, "persample_grads", refuse)


def assert_exact_diag(m, X, y, **kw):
    """fk.fisher's exact diagonal = the float64 brute force's."""
    D = fk.fisher(m, (X, y), kind="exact", structure="diag", **kw).diag()
    ref = brute_fisher(m, X, y, "categorical", "exact").diagonal()
    assert float((D - ref).norm() / ref.norm()) < 1e-10


def data():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 13, (7, 5), generator=g), torch.randint(0, 3, (7,), generator=g)


@pytest.mark.parametrize("ids", ["row", "new"])
@pytest.mark.parametrize("kind", ["exact", "empirical", "mc"])
def test_position_embedding_is_per_sample_without_torch_func(kind, ids, monkeypatch):
    m = PosModel(ids=ids).double().eval()
    X, y = data()
    plan = plan_of(m, X)
    assert plan.func_names == [] and shared_modes(plan, m.pos) == [ids]
    refuse_torch_func(monkeypatch)
    F = fk.fisher(m, (X, y), kind=kind, structure="dense", batch_size=4, generator=0).to_dense()
    if kind == "mc":  # the same label draws through the torch.func path (FISHERKIT_FORCE_FUNC) as reference
        monkeypatch.undo()
        monkeypatch.setenv("FISHERKIT_FORCE_FUNC", "1")
        ref = fk.fisher(m, (X, y), kind=kind, structure="dense", batch_size=4, generator=0).to_dense()
    else:
        ref = brute_fisher(m, X, y, "categorical", kind)
    assert float((F - ref).norm() / ref.norm()) < 1e-10


@pytest.mark.parametrize("ids", ["row", "new"])
def test_a_shared_row_the_model_reshapes_goes_to_torch_func(ids):
    m = PosModel(squeeze=True, ids=ids).double().eval()
    X, y = data()
    assert "pos.weight" in plan_of(m, X).func_names
    assert_exact_diag(m, X, y)


def test_positions_as_many_as_the_probe_rows_are_still_shared(monkeypatch):
    """T = 8 = the settling probe's rows: the ids [T] look per sample in one probe, not in two."""
    m = PosModel(ids="new").double().eval()
    g = torch.Generator().manual_seed(2)
    X, y = torch.randint(0, 13, (10, 8), generator=g), torch.randint(0, 3, (10,), generator=g)
    plan = plan_of(m, X)
    assert plan.func_names == [] and shared_modes(plan, m.pos) == ["new"]
    refuse_torch_func(monkeypatch)
    assert_exact_diag(m, X, y, batch_size=4)


@pytest.mark.parametrize("ids", ["row", "new"])
def test_one_sample_batches_keep_the_shared_rows(ids, monkeypatch):
    """A batch of one sample (one long sequence at a time) is probed as two copies of it, so the position
    table is still recognised as shared (not sent to torch.func)."""
    m = PosModel(ids=ids).double().eval()
    X, y = data()
    plan = plan_of(m, X[:1])
    assert plan.func_names == [] and shared_modes(plan, m.pos) == [ids]
    refuse_torch_func(monkeypatch)
    assert_exact_diag(m, X, y, batch_size=1)


class RelativeBias(nn.Module):
    """T5-style: an Embedding looked up on [T, T] relative buckets, its [T, T, h] output permuted as a 3-D
    tensor — an expanded (4-D) output would break the model, so the unit must go to torch.func, not crash."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.tok, self.rel = nn.Embedding(13, 6), nn.Embedding(9, 2)
        self.head = nn.Linear(6, 3)

    def forward(self, ids):
        T = ids.shape[1]
        buckets = (torch.arange(T)[None, :] - torch.arange(T)[:, None]).clamp(-4, 4) + 4  # [T, T]
        bias = self.rel(buckets).permute(2, 0, 1)  # [h, T, T]
        e = self.tok(ids)  # [B, T, 6]
        att = torch.softmax(e @ e.transpose(1, 2) + bias.sum(0), -1)  # [B, T, T]
        return self.head((att @ e).mean(1))


def test_a_shared_table_the_model_cannot_take_expanded_goes_to_torch_func():
    m = RelativeBias().double().eval()
    X, y = data()
    assert "rel.weight" in plan_of(m, X).func_names
    assert_exact_diag(m, X, y)
