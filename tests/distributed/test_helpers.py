"""The pieces of fisherkit.distributed that need no process group (single process: pass-through)."""

from __future__ import annotations

import pytest
import torch

import fisherkit as fk
import fisherkit.distributed as fd


def test_assign_owners_balances_cubic_work():
    # brute force: the greedy assignment's largest load is within one matrix of the best split
    sizes = [300, 10, 200, 200, 50, 120]
    owner = fd.assign_owners(sizes, 2)
    load = [sum(s**3 for s, o in zip(sizes, owner) if o == r) for r in range(2)]
    best = min(max(sum(s**3 for i, s in enumerate(sizes) if m >> i & 1), sum(s**3 for i, s in enumerate(sizes)
               if not m >> i & 1)) for m in range(2 ** len(sizes)))
    assert max(load) <= best + 200**3
    assert owner[0] != owner[2]  # the two largest go to different ranks
    assert fd.assign_owners([5, 5, 5], 3) == [0, 1, 2]


def test_single_process_is_a_pass_through():
    assert fd.world_size() == 1 and fd.rank() == 0 and fd.active_group() is None
    sums = {"a": torch.ones(3)}
    out, n = fd.all_reduce_sums(sums, 7)
    assert out is sums and n == 7
    g = torch.Generator().manual_seed(3)
    assert fd.rank_generator(g) is g and fd.rank_seed(11) == 11
    model = torch.nn.Linear(2, 2)
    opt = fk.optim.NaturalGradient(model, structure="kfac")
    assert fd.distribute_optimizer(opt) is opt and not hasattr(opt.pre, "_data_parallel")
    m = torch.randn(4, 4, dtype=torch.float64)
    m = m @ m.T
    vals, vecs = fd.top_eigenpairs(m, 2)
    ref = torch.linalg.eigvalsh(m).flip(0)[:2]
    assert torch.allclose(vals, ref) and torch.allclose(m @ vecs, vecs * vals)


def test_distribute_optimizer_refuses_other_optimizers():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(fk.errors.FisherkitError, match="NaturalGradient or Preconditioner"):
        fd.distribute_optimizer(torch.optim.SGD(model.parameters(), lr=0.1))


def test_distributed_error_is_a_fisherkit_error():
    assert issubclass(fd.DistributedError, fk.errors.FisherkitError)
    assert issubclass(fd.DistributedError, RuntimeError)
