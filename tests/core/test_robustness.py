"""Bad input to the matrix-free path (``structure="implicit"``, ``fk.fvp``) and to a finished Fisher's
``mv``/``solve``: a named error that says which batch and what to do — never a NaN vector or a raw
torch traceback. The model is left untouched.
"""

import pytest
import torch
from torch import nn

import fisherkit as fk
from fisherkit.errors import NonFiniteError, ShapeError

STRUCTURES = ["diag", "kfac", "ekfac", "block", "dense", "lowrank", "implicit"]


def small():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    X = torch.randn(8, 3)
    y = torch.randint(0, 2, (8,))
    return m, X, y, sum(p.numel() for p in m.parameters())


def params_of(m):
    return [p.detach().clone() for p in m.parameters()]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_fvp_nonfinite_input_names_the_batch(bad):
    m, X, y, P = small()
    X[5, 1] = bad
    before = params_of(m)
    with pytest.raises(NonFiniteError, match=r"batch 1 .*rows \[1\]"):
        fk.fvp(m, [(X[:4], y[:4]), (X[4:], y[4:])], torch.ones(P))
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))


def test_implicit_nonfinite_input_refused_when_built():
    m, X, y, P = small()
    X[2, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"batch 0 .*rows \[2\]"):
        fk.fisher(m, (X, y), structure="implicit")


def test_fvp_nonfinite_product_from_finite_outputs_is_named():
    class Sqrt(nn.Module):  # finite output at 0, infinite derivative there
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.zeros(2))

        def forward(self, x):
            return x + torch.sqrt(self.scale)

    with pytest.raises(NonFiniteError, match="batch 0 .*outputs are finite"):
        fk.fvp(Sqrt(), (torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)), torch.ones(2))


def test_fvp_nonfinite_vector():
    m, X, y, P = small()
    v = torch.ones(P)
    v[3] = float("nan")
    with pytest.raises(NonFiniteError, match="v holds NaN"):
        fk.fvp(m, (X, y), v)


@pytest.mark.parametrize("how", ["fvp", "implicit"])
def test_integer_inputs_to_a_linear_model(how):
    m, X, y, P = small()
    Xi = torch.randint(0, 3, (8, 3))
    with pytest.raises(ShapeError, match=r"batch 0.*torch.int64.*Linear\(3, \.\.\.\).*x.float\(\)"):
        if how == "fvp":
            fk.fvp(m, (Xi, y), torch.ones(P))
        else:
            fk.fisher(m, (Xi, y), structure="implicit").mv(torch.ones(P))


@pytest.mark.parametrize("how", ["fvp", "implicit"])
def test_wrong_number_of_features(how):
    m, X, y, P = small()
    X5 = torch.randn(8, 5)
    with pytest.raises(ShapeError, match="batch 0.*expects 3 features in the last dimension, the batch has 5"):
        if how == "fvp":
            fk.fvp(m, (X5, y), torch.ones(P))
        else:
            fk.fisher(m, (X5, y), structure="implicit").mv(torch.ones(P))


@pytest.mark.parametrize("structure", STRUCTURES)
def test_float64_vector_into_float32_fisher_is_refused(structure):
    """Decision: no silent cast (as torch's own matmul): a float64 vector would lose digits in float32."""
    m, X, y, P = small()
    F = fk.fisher(m, (X, y), structure=structure, **({"rank": 3} if structure == "lowrank" else {}))
    v = torch.ones(P, dtype=torch.float64)
    with pytest.raises(ShapeError, match=r"float64 but this Fisher is torch.float32; pass v.to\(torch.float32\)"):
        F.mv(v)
    with pytest.raises(ShapeError, match="float64 but this Fisher is torch.float32"):
        F.solve(v, 0.1)
    assert torch.isfinite(F.solve(v.float(), 0.1)).all()


@pytest.mark.parametrize("structure", STRUCTURES)
def test_lossless_upcast_is_done_and_integers_refused(structure):
    """bf16/fp16 vectors (e.g. a bf16 model's gradient; such models keep float32 Fishers) are cast up
    losslessly; an integer vector is refused like a float64 one."""
    m, X, y, P = small()
    F = fk.fisher(m, (X, y), structure=structure, **({"rank": 3} if structure == "lowrank" else {}))
    v = torch.linspace(-1, 1, P).to(torch.bfloat16)
    for half in (torch.bfloat16, torch.float16):
        got = F.solve(v.to(half), 0.1)
        assert got.dtype == torch.float32 and torch.equal(got, F.solve(v.to(half).float(), 0.1))
    with pytest.raises(ShapeError, match="torch.int64 but this Fisher is torch.float32"):
        F.mv(torch.ones(P, dtype=torch.long))


def test_fvp_float64_vector_into_float32_model():
    m, X, y, P = small()
    with pytest.raises(ShapeError, match="v is torch.float64 but the model's parameters are torch.float32"):
        fk.fvp(m, (X, y), torch.ones(P, dtype=torch.float64))


class _Tuple(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        return self.lin(x), x.sum()


class _Dict(_Tuple):
    def forward(self, x):
        return {"logits": self.lin(x), "hidden": x}


@pytest.mark.parametrize("cls", [_Tuple, _Dict])
def test_implicit_on_a_model_returning_a_tuple_or_dict(cls):
    """The logits are picked as everywhere else (a tuple's first element, a dict's 'logits'): the
    implicit operator equals the dense Fisher of the same model."""
    pytest.importorskip("fisherkit.engine.adapters")  # the engine's output adapters (tuple / dict / HF outputs)
    m = cls()
    X, y = torch.randn(6, 3), torch.randint(0, 2, (6,))
    dense = fk.fisher(m, (X, y), structure="dense").to_dense()
    v = torch.randn(8)
    assert torch.allclose(fk.fisher(m, (X, y), structure="implicit").mv(v), dense @ v, atol=1e-5)
    assert torch.allclose(fk.fvp(m, (X, y), v), dense @ v, atol=1e-5)


def test_implicit_on_a_dict_without_logits_is_named():
    pytest.importorskip("fisherkit.engine.adapters")
    class NoLogits(_Tuple):
        def forward(self, x):
            return {"scores": self.lin(x)}

    X, y = torch.randn(6, 3), torch.randint(0, 2, (6,))
    with pytest.raises(fk.FisherkitError, match="output="):
        fk.fisher(NoLogits(), (X, y), structure="implicit").mv(torch.ones(8))


@pytest.mark.parametrize("structure", ["diag", "kfac", "dense"])
@pytest.mark.parametrize("bad", ["integers", "features"])
def test_fisher_names_inputs_that_do_not_fit_the_model(structure, bad):
    m, X, y, P = small()
    X = torch.randint(0, 3, (8, 3)) if bad == "integers" else torch.randn(8, 5)
    want = r"x.float\(\)" if bad == "integers" else "expects 3 features in the last dimension, the batch has 5"
    with pytest.raises(ShapeError, match="batch 0: .*" + want):
        fk.fisher(m, (X, y), structure=structure)
