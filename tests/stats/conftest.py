"""The stats tests are many tiny float64 problems: one torch thread is fastest and plays well with
other jobs sharing the CPU."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
