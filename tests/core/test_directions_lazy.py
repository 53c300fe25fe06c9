"""The exact kind's directions on sequence outputs are built a chunk at a time (engine.directions.
ExactDirections): the chunks equal the full tensor, and fisher never holds the whole [T·K, B, T, C]."""

from __future__ import annotations

import torch
from torch import nn

import fisherkit as fk
from fisherkit.engine import collect
from fisherkit.engine.directions import ExactDirections, exact_directions
from fisherkit.likelihoods import get_likelihood


def test_chunks_equal_the_full_directions_with_a_mask():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(3, 4, 5, 6, generator=g, dtype=torch.float64)  # [B, *E = (4, 5), C]
    mask = torch.rand(3, 4, 5, generator=g) < 0.7
    lik = get_likelihood("categorical")
    full = exact_directions(lik, f) * mask.unsqueeze(0).unsqueeze(-1)
    lazy = ExactDirections(lik, f, mask)
    assert lazy.shape == tuple(full.shape)
    pieces = torch.cat([lazy[a : a + 7] for a in range(0, lazy.shape[0], 7)])
    assert torch.equal(pieces, full)


def test_fisher_sends_bounded_chunks_of_exact_directions(monkeypatch):
    torch.manual_seed(0)
    t, v = 24, 11
    model = nn.Sequential(nn.Embedding(v, 4), nn.Linear(4, v)).double().eval()
    ids = torch.randint(0, v, (2, t))
    seen, real = [], collect.output_grads

    def spy(out, zs, vc, retain=False):
        seen.append(vc.numel() * vc.element_size())
        return real(out, zs, vc, retain)

    ref = fk.fisher(model, (ids, ids), kind="exact", structure="diag").diag()
    monkeypatch.setattr(collect, "output_grads", spy)
    budget = 2**16
    got = fk.fisher(model, (ids, ids), kind="exact", structure="diag", max_memory=budget).diag()
    full = t * (v - 1) * 2 * t * v * 8  # the whole direction tensor of one batch, in bytes
    assert max(seen) <= budget < full and len(seen) > 1
    assert torch.allclose(got, ref, rtol=1e-12, atol=1e-15)


def test_the_forward_records_no_graph_upstream_of_the_chosen_parameters(monkeypatch):
    """params= a head only: the capture forward runs with the other parameters frozen (restored after,
    also when the forward raises), so the embedding's output carries no graph; the result is unchanged."""
    from fisherkit.engine import units

    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(11, 4), nn.Tanh(), nn.Linear(4, 11)).double().eval()
    ids = torch.randint(0, 11, (3, 5))
    flags = []
    model[0].register_forward_hook(lambda m, i, o: flags.append(o.requires_grad))
    F = fk.fisher(model, (ids, ids), kind="exact", structure="dense", params=["2.weight", "2.bias"]).to_dense()
    assert flags and not flags[-1]  # the capture forward (the last one) recorded no graph at the embedding
    ref = fk.fisher(model, (ids, ids), kind="exact", structure="dense").to_dense()
    assert flags[-1]  # all parameters: it does
    n = F.shape[0]
    assert torch.allclose(F, ref[-n:, -n:], rtol=1e-12, atol=1e-15)
    assert all(p.requires_grad for p in model.parameters())
    with units.only_chosen_grads(model, ["2.weight"]):
        assert not model[0].weight.requires_grad and model[2].weight.requires_grad
    assert all(p.requires_grad for p in model.parameters())
