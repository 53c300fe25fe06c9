"""The spawned runs (2 and 3 ranks, started together: each process imports torch, slow), shared by the tests."""

from __future__ import annotations

import pytest

import dist_workers as w


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """2 ranks: fisher (all structures), error paths, NaturalGradient, EWC. 3 ranks: fisher (all
    structures, one empty shard), then the loss of a rank."""
    dirs = {world: tmp_path_factory.mktemp(f"ranks{world}") for world in (2, 3)}
    w.spawn_many([(w.fisher_worker, world, (w.free_port(), str(d))) for world, d in dirs.items()], timeout=400)
    return dirs


@pytest.fixture(scope="session")
def run_2_ranks(runs):
    return runs[2]


@pytest.fixture(scope="session")
def run_3_ranks(runs):
    return runs[3]
