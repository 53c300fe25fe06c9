"""``engine.accumulate.persample_sq_sum`` — Σ_n Σ_d (Σ_t g_{d,n,t} ã_{n,t}ᵀ)², the diagonal of a layer shared
over positions — on both of its paths (direct products per direction; through the positions' Gram when a
sample has many directions, the exact kind on sequences) against the per-sample gradients formed in float64."""

from __future__ import annotations

import pytest
import torch

from fisherkit.engine import accumulate as acc


def brute(a, g):
    return torch.einsum("dbto,bti->dboi", g, a).pow(2).sum((0, 1))


@pytest.mark.parametrize("shape", [(1, 6, 5, 7, 9), (3, 4, 6, 5, 8), (40, 2, 5, 7, 9), (300, 1, 4, 33, 17)])
@pytest.mark.parametrize("layout", ["sequence", "conv"])
def test_both_paths_equal_the_per_sample_gradients(shape, layout):
    d, b, t, o, i = shape
    gen = torch.Generator().manual_seed(d + b)
    a = torch.randn(b, t, i, generator=gen, dtype=torch.float64)
    if layout == "conv":  # [D, B, O, T] transposed: a strided view, as unit_output_grads gives for a conv
        g = torch.randn(d, b, o, t, generator=gen, dtype=torch.float64).transpose(2, 3)
    else:
        g = torch.randn(d, b, t, o, generator=gen, dtype=torch.float64)
    ref = brute(a, g)
    assert torch.allclose(acc.persample_sq_sum(a, g), ref, rtol=1e-12, atol=0)
    # the Gram path with output rows in small chunks, and the direct path with small sample chunks
    assert torch.allclose(acc._sq_sum_by_positions(a, g, chunk_bytes=t * t * 8 * 3), ref, rtol=1e-12, atol=0)


def test_the_gram_path_is_taken_only_with_many_directions_per_sample(monkeypatch):
    calls = []
    real = acc._sq_sum_by_positions
    monkeypatch.setattr(acc, "_sq_sum_by_positions", lambda *x: calls.append(1) or real(*x))
    a = torch.randn(2, 16, 257, dtype=torch.float64)
    acc.persample_sq_sum(a, torch.randn(1, 2, 16, 64, dtype=torch.float64))  # mc: one direction
    assert calls == []
    acc.persample_sq_sum(a, torch.randn(96 * 16, 2, 16, 8, dtype=torch.float64))  # exact over 97 classes
    assert calls == [1]
