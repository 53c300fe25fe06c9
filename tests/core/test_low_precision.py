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


class _Seq(nn.Module):
    """Token embedding + a position table looked up on arange(T) + a bare learned offset, LayerNorm, Linear:
    every closed-form path of a sequence model (no Kronecker-free parameter takes torch.func)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.tok, self.pos = nn.Embedding(11, 8), nn.Embedding(64, 8)
        self.offset = nn.Parameter(0.1 * torch.randn(64, 8))
        self.norm, self.mix, self.head = nn.LayerNorm(8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, ids):
        T = ids.shape[1]
        h = self.tok(ids) + self.pos(torch.arange(T, device=ids.device)) + self.offset[:T]
        return self.head(torch.tanh(self.mix(self.norm(h))).mean(1))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sequence_closed_forms_in_low_precision_match_float64(dtype):
    from fisherkit.engine.units import make_plan, settle

    m = _Seq().to(dtype).eval()
    m64 = _Seq().double().eval()
    m64.load_state_dict({k: v.double() for k, v in m.state_dict().items()})
    g = torch.Generator().manual_seed(6)
    X, y = torch.randint(0, 11, (6, 64), generator=g), torch.randint(0, 3, (6,), generator=g)
    assert settle(m, make_plan(m, dict(m.named_parameters()), elementwise=True), X).func_names == []
    D = fk.fisher(m, (X, y), kind="exact", structure="diag", batch_size=3).diag()
    assert D.dtype == torch.float32  # statistics of 16-bit models are float32
    ref = brute_fisher(m64, X, y, "categorical", "exact").diagonal()
    assert float((D.double() - ref).norm() / ref.norm()) < TOL[dtype]
