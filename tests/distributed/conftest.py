"""One spawned run per world size (each process imports torch: slow to start), shared by the tests."""

from __future__ import annotations

import pytest

import dist_workers as w


def _run(world, tmp_path_factory):
    d = tmp_path_factory.mktemp(f"ranks{world}")
    w.spawn(w.fisher_worker, world, (w.free_port(), str(d)), timeout=300)
    return d


@pytest.fixture(scope="session")
def run_2_ranks(tmp_path_factory):
    """fisher (all structures), error paths, NaturalGradient and EWC on 2 ranks."""
    return _run(2, tmp_path_factory)


@pytest.fixture(scope="session")
def run_3_ranks(tmp_path_factory):
    """fisher (all structures, one empty shard), then the loss of a rank on 3 ranks."""
    return _run(3, tmp_path_factory)
