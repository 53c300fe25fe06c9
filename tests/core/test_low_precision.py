"""bf16 / fp16 models: DESIGN.md promises that their statistics accumulate in float32.

Reference: the float64 brute force (tests/reference.py) of the same model with its low-precision
weights cast to float64. One point's Fisher computed once must agree with it to the forward's
precision (relative 3e-2 for bf16, whose unit round-off is 2⁻⁸ ≈ 3.9e-3; 5e-3 for fp16); the mean
over 300 copies of that point, one per batch, is the same matrix, so it must agree just as well.
A running sum kept in bf16 stalls once it is ~256 times an increment (an increment then rounds
away): the result is off by 8 % (diag) to 14 % (kfac) here, and by 1.6 % in fp16.
"""

import pytest
import torch
from torch import nn

import fisherkit as fk
from reference import brute_fisher

TOL = {torch.bfloat16: 3e-2, torch.float16: 5e-3}
STRUCTURES = ["diag", "dense", "block", "kfac"]


def setup(dtype):
    torch.manual_seed(3)
    m = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(dtype).eval()
    x = torch.randn(1, 4, generator=torch.Generator().manual_seed(4)).to(dtype)
    m64 = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double().eval()
    m64.load_state_dict({k: v.double() for k, v in m.state_dict().items()})
    return m, x, brute_fisher(m64, x.double(), None, "categorical", "exact")


def rel_diag(C, F):
    return float((C.diag().double() - F.diagonal()).norm() / F.diagonal().norm())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("structure", STRUCTURES)
def test_one_batch_matches_float64_reference(dtype, structure):
    m, x, F = setup(dtype)
    assert rel_diag(fk.fisher(m, (x, None), structure=structure), F) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("structure", ["diag", "kfac"])
def test_many_batches_accumulate_in_float32(dtype, structure):
    m, x, F = setup(dtype)
    X = x.expand(300, 4).contiguous()
    assert rel_diag(fk.fisher(m, (X, None), structure=structure, batch_size=1), F) < TOL[dtype]
