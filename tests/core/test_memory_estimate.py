"""fk.memory_estimate and the refusal before any work (curvature/memory.py).

The estimate is checked against the finished curvature's own tensors (it must bound them, and not by
more than the running sums it also counts), and the refusal against a counter of model calls.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fisherkit as fk
from fisherkit.curvature import memory
from fisherkit.errors import FisherkitError

from models import labels, make


def held_bytes(obj, seen=None) -> int:
    """Bytes of every distinct tensor reachable from a curvature object's attributes."""
    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        key = (obj.untyped_storage().data_ptr(), obj.dtype)
        if key in seen:
            return 0
        seen.add(key)
        return obj.untyped_storage().nbytes()
    if isinstance(obj, (list, tuple)):
        return sum(held_bytes(o, seen) for o in obj)
    if isinstance(obj, dict):
        return sum(held_bytes(o, seen) for o in obj.values())
    if hasattr(obj, "__dict__") and type(obj).__module__.startswith("fisherkit"):
        return sum(held_bytes(o, seen) for o in vars(obj).values())
    return 0


@pytest.mark.parametrize("name", ["mlp", "cnn", "attention"])
@pytest.mark.parametrize("structure", ["diag", "kfac", "ekfac", "block", "dense", "lowrank"])
def test_estimate_bounds_what_the_structure_holds(name, structure):
    m, X = make(name)
    y = labels(m, X, "categorical")
    est = fk.memory_estimate(m, rank=5)[structure]
    F = fk.fisher(m, (X, y), structure=structure, rank=5)
    held = held_bytes(F)
    assert held <= est, (held, est)
    if structure != "lowrank":  # lowrank keeps k eigenvectors of the P² Gram it counted
        assert est <= 3 * held + 4096, (held, est)


def test_a_structure_that_cannot_fit_is_refused_before_the_model_runs(monkeypatch):
    m = nn.Sequential(nn.Linear(300, 300), nn.Tanh(), nn.Linear(300, 10))
    calls = []
    m.register_forward_hook(lambda *a: calls.append(1))
    need = fk.memory_estimate(m)
    assert need["ekfac"] > need["kfac"] > need["diag"]
    monkeypatch.setattr(memory, "available_bytes", lambda device: int(need["kfac"] / memory.HEADROOM) + 1)
    X, y = torch.randn(8, 300), torch.randint(0, 10, (8,))
    with pytest.raises(FisherkitError, match=r"structure='ekfac' .* needs about .* is available on cpu; use structure='diag'"):
        fk.fisher(m, (X, y), structure="ekfac")
    assert calls == []
    fk.fisher(m, (X, y), structure="kfac")  # the one that fits runs
    assert calls


def test_nothing_fits_says_take_fewer_parameters(monkeypatch):
    m = nn.Linear(50, 5)
    monkeypatch.setattr(memory, "available_bytes", lambda device: 16)
    with pytest.raises(FisherkitError, match="no structure fits: take fewer parameters with params="):
        fk.fisher(m, (torch.randn(4, 50), torch.randint(0, 5, (4,))), structure="diag")


def test_bf16_models_are_estimated_in_float32():
    m = nn.Linear(64, 8)
    e32 = fk.memory_estimate(m)
    e16 = fk.memory_estimate(m.to(torch.bfloat16))
    assert e16 == e32  # statistics are accumulated in float32


def test_memory_estimate_refuses_bad_input():
    with pytest.raises(FisherkitError, match="torch.nn.Module"):
        fk.memory_estimate("model")
    with pytest.raises(FisherkitError, match="rank"):
        fk.memory_estimate(nn.Linear(2, 2), rank=0)
