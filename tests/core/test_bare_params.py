"""Bare parameters added to an activation (learned positions ``self.pos[:T]``, ViT's ``pos_embed`` of
shape [1, N, d]) get closed-form per-sample gradients (engine.bare) instead of a torch.func pass — against
float64 brute force (tests/reference.py). Any other use of the parameter sends it to torch.func, still
exact."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fisherkit as fk
from fisherkit.engine import collect
from fisherkit.engine.units import make_plan, settle

from reference import brute_fisher


class Positions(nn.Module):
    """Token embedding + a bare positional table used in one of several ways."""

    def __init__(self, use="slice"):
        super().__init__()
        torch.manual_seed(0)
        self.use = use
        self.tok = nn.Embedding(11, 6)
        self.pos = nn.Parameter(0.3 * torch.randn(9, 6))
        self.mix, self.head = nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, ids):
        e, T = self.tok(ids), ids.shape[1]
        if self.use == "slice":  # h = emb + pos[:T]
            h = e + self.pos[:T]
        elif self.use == "left":  # pos[:T].unsqueeze(0) + emb: a view of a view, on the left
            h = self.pos[:T].unsqueeze(0) + e
        elif self.use == "twice":  # a second use: the addition alone is not the gradient
            h = (e + self.pos[:T]) * self.pos[:T].sum()
        elif self.use == "inplace":
            h = e.clone()
            h += self.pos[:T]
        elif self.use == "expand":  # a view with a zero stride (overlapping): not handled
            h = e + self.pos[:1].expand(T, 6)
        elif self.use == "scale":  # not an addition
            h = e * self.pos[:T]
        else:
            raise ValueError(self.use)
        return self.head(torch.tanh(self.mix(h)).mean(1))


class PatchModel(nn.Module):
    """ViT-style: patch features [B, N, d] + pos_embed [1, N, d] (a leading 1 against the samples)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.proj = nn.Linear(5, 4)
        self.pos_embed = nn.Parameter(0.2 * torch.randn(1, 7, 4))
        self.norm, self.head = nn.LayerNorm(4), nn.Linear(4, 3)

    def forward(self, x):
        h = self.norm(self.proj(x) + self.pos_embed)
        return self.head(h.mean(1))


class ClsModel(nn.Module):
    """ViT's class token: ``torch.cat([cls.expand(B, -1, -1), x], 1)``, then positions added, read at the token."""

    def __init__(self, where="front"):
        super().__init__()
        torch.manual_seed(2)
        self.where = where
        self.proj = nn.Linear(5, 4)
        self.cls = nn.Parameter(0.5 * torch.randn(1, 1, 4))
        self.pos = nn.Parameter(0.2 * torch.randn(1, 8, 4))
        self.mix, self.head = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        h = self.proj(x)
        c = self.cls.expand(h.shape[0], -1, -1)
        h = torch.cat([c, h] if self.where == "front" else [h, c], dim=1) + self.pos
        h = torch.tanh(self.mix(h))
        return self.head(h[:, 0] + h.mean(1))


def tokens(n=7, T=5):
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, 11, (n, T), generator=g), torch.randint(0, 3, (n,), generator=g)


def no_func(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("torch.func per-sample pass used")

    monkeypatch.setattr(collect, "persample_grads", refuse)


def plan_of(m, X):
    return settle(m, make_plan(m, dict(m.named_parameters()), elementwise=True), X)


@pytest.mark.parametrize("use", ["slice", "left"])
@pytest.mark.parametrize("kind", ["exact", "empirical"])
def test_positions_equal_brute_force_without_torch_func(use, kind, monkeypatch):
    m = Positions(use).double().eval()
    X, y = tokens()
    plan = plan_of(m, X)
    assert plan.func_names == [] and "pos" in [n for u in plan.elem_units for n in u.names.values()]
    no_func(monkeypatch)
    F = fk.fisher(m, (X, y), kind=kind, structure="dense", batch_size=3).to_dense()
    ref = brute_fisher(m, X, y, "categorical", kind)
    assert float((F - ref).norm() / ref.norm()) < 1e-10


def test_vit_pos_embed_mc_equals_the_torch_func_path(monkeypatch):
    m = PatchModel().double().eval()
    g = torch.Generator().manual_seed(4)
    X, y = torch.randn(6, 7, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (6,), generator=g)
    assert plan_of(m, X).func_names == []
    no_func(monkeypatch)
    F = fk.fisher(m, (X, y), kind="mc", mc_samples=2, structure="dense", batch_size=4, generator=0).to_dense()
    monkeypatch.undo()
    monkeypatch.setenv("FISHERKIT_FORCE_FUNC", "1")  # the same label draws, every parameter by torch.func
    ref = fk.fisher(m, (X, y), kind="mc", mc_samples=2, structure="dense", batch_size=4, generator=0).to_dense()
    assert float((F - ref).norm() / ref.norm()) < 1e-10
    exact = fk.fisher(m, (X, y), kind="exact", structure="diag").diag()
    assert float((exact - brute_fisher(m, X, y, "categorical", "exact").diagonal()).norm()) < 1e-10 * float(exact.norm())


@pytest.mark.parametrize("use", ["twice", "inplace", "expand", "scale"])
def test_other_uses_go_to_torch_func_and_stay_exact(use):
    m = Positions(use).double().eval()
    X, y = tokens()
    assert "pos" in plan_of(m, X).func_names
    D = fk.fisher(m, (X, y), kind="exact", structure="diag", batch_size=4).diag()
    ref = brute_fisher(m, X, y, "categorical", "exact").diagonal()
    assert float((D - ref).norm() / ref.norm()) < 1e-10


def test_the_watch_leaves_nothing_behind():
    m = Positions("slice").double().train()
    X, y = tokens()
    flags = [p.requires_grad for p in m.parameters()]
    before = {k: v.clone() for k, v in m.state_dict().items()}
    fk.fisher(m, (X, y), kind="exact", structure="diag")
    assert torch._C._len_torch_function_stack() == 0  # the TorchFunctionMode was popped
    assert m.training and flags == [p.requires_grad for p in m.parameters()]
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    out = m(X)  # the model runs as before, outside fisherkit
    assert out.shape == (7, 3)


@pytest.mark.parametrize("where", ["front", "back"])
def test_class_token_joined_by_cat_equals_brute_force(where, monkeypatch):
    m = ClsModel(where).double().eval()
    g = torch.Generator().manual_seed(5)
    X, y = torch.randn(6, 7, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (6,), generator=g)
    plan = plan_of(m, X)
    assert plan.func_names == []
    assert [u.handler.where[0] for u in plan.elem_units if "cls" in u.names.values()] == ["cat"]
    no_func(monkeypatch)
    F = fk.fisher(m, (X, y), kind="exact", structure="dense", batch_size=4).to_dense()
    ref = brute_fisher(m, X, y, "categorical", "exact")
    assert float((F - ref).norm() / ref.norm()) < 1e-10


def test_hf_vit_takes_no_torch_func_pass(monkeypatch):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=32, num_labels=3)
    torch.manual_seed(0)
    m = transformers.ViTForImageClassification(cfg).double().eval()
    g = torch.Generator().manual_seed(6)
    X, y = torch.randn(5, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 3, (5,), generator=g)
    assert plan_of(m, X).func_names == []  # cls_token (cat) and position_embeddings (add) in closed form
    no_func(monkeypatch)
    D = fk.fisher(m, (X, y), kind="exact", structure="diag", output="logits", batch_size=3).diag()
    monkeypatch.undo()
    monkeypatch.setenv("FISHERKIT_FORCE_FUNC", "1")
    ref = fk.fisher(m, (X, y), kind="exact", structure="diag", output="logits", batch_size=3).diag()
    assert float((D - ref).norm() / ref.norm()) < 1e-10
