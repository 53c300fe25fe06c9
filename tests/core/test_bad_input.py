"""Bad input gets an error that names the problem (batch, parameter, label) — one test each."""

import pytest
import torch
from torch import nn

import fisherkit as fk
from models import make


@pytest.fixture
def mlp():
    return make("mlp")


def test_non_finite_output_names_the_batch(mlp):
    m, X = mlp
    X = X.clone()
    X[6, 0] = float("nan")
    with pytest.raises(fk.errors.NonFiniteError, match="batch 1"):
        fk.fisher(m, (X, None), batch_size=4)


def test_non_finite_gradient_names_the_parameter():
    class Sqrt(nn.Module):  # finite output, infinite gradient at 0
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.zeros(3, dtype=torch.float64))

        def forward(self, x):
            return x + torch.sqrt(self.scale)

    with pytest.raises(fk.errors.NonFiniteError, match="'scale' in batch 0"):
        fk.fisher(Sqrt(), (torch.zeros(2, 3, dtype=torch.float64), None))


def test_label_out_of_range_names_label_and_batch(mlp):
    m, X = mlp
    y = torch.zeros(len(X), dtype=torch.long)
    y[5] = 3
    with pytest.raises(fk.errors.SupportError, match=r"label 3 at index \[1\] in batch 1 is out of range for 3 classes"):
        fk.fisher(m, (X, y), kind="empirical", batch_size=4)


def test_label_wrong_dtype(mlp):
    m, X = mlp
    with pytest.raises(fk.errors.SupportError, match="integer class indices"):
        fk.fisher(m, (X, torch.zeros(len(X))), kind="empirical")


def test_output_shape_that_does_not_fit_the_likelihood(mlp):
    m, X = mlp
    with pytest.raises(fk.errors.ShapeError, match="gaussian targets of shape"):
        fk.fisher(m, (X, torch.zeros(len(X), 2, dtype=torch.float64)), likelihood="gaussian", kind="empirical")
    flat = nn.Sequential(nn.Linear(4, 1), nn.Flatten(0)).double()
    with pytest.raises(fk.errors.ShapeError, match=r"\[batch, ..., classes\]"):
        fk.fisher(flat, (X, None))
    with pytest.raises(fk.errors.SupportError, match="not 0 or 1"):
        fk.fisher(m, (X, torch.full((len(X), 3), 0.5, dtype=torch.float64)), likelihood="bernoulli", kind="empirical")


def test_empty_data(mlp):
    m, X = mlp
    with pytest.raises(fk.FisherkitError, match="empty"):
        fk.fisher(m, (X[:0], None))
    with pytest.raises(fk.FisherkitError, match="empty"):
        fk.fisher(m, [])


def test_mismatched_rows(mlp):
    m, X = mlp
    with pytest.raises(fk.errors.ShapeError, match="9 rows but labels have 8"):
        fk.fisher(m, (X, torch.zeros(8, dtype=torch.long)), kind="empirical")


def test_params_not_in_model(mlp):
    m, X = mlp
    with pytest.raises(fk.FisherkitError, match="'nope' is not in the model"):
        fk.fisher(m, (X, None), params=["nope"])
    with pytest.raises(fk.FisherkitError, match="not a parameter of the model"):
        fk.fisher(m, (X, None), params=[torch.zeros(3)])


def test_params_subset_gives_the_sub_block(mlp):
    m, X = mlp
    full = fk.fisher(m, (X, None), structure="dense").to_dense()
    sub = fk.fisher(m, (X, None), structure="dense", params=["2.weight", "2.bias"]).to_dense()
    assert torch.allclose(sub, full[25:, 25:], atol=1e-12)


def test_batchnorm_in_training_mode():
    m = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 3)).double().train()
    X = torch.randn(8, 4, dtype=torch.float64)
    with pytest.raises(fk.FisherkitError, match="model.eval"):
        fk.fisher(m, (X, None))
    F = fk.fisher(m, (X, None), allow_batchnorm_train=True)
    assert torch.isfinite(F.diag()).all() and F.diag().sum() > 0
    m.eval()
    fk.fisher(m, (X, None))  # eval mode: fine


def test_dense_above_threshold_suggests_cheaper_structures():
    big = nn.Sequential(nn.Linear(200, 150), nn.Linear(150, 10))
    with pytest.raises(fk.FisherkitError, match="kfac.*diag.*lowrank.*implicit"):
        fk.fisher(big, (torch.randn(4, 200), None), structure="dense")


def test_unknown_kind_structure_likelihood(mlp):
    m, X = mlp
    with pytest.raises(fk.FisherkitError, match="unknown kind"):
        fk.fisher(m, (X, None), kind="true")
    with pytest.raises(fk.FisherkitError, match="unknown structure"):
        fk.fisher(m, (X, None), structure="full")
    with pytest.raises(ValueError, match="unknown likelihood"):
        fk.fisher(m, (X, None), likelihood="poisson")
    with pytest.raises(fk.FisherkitError, match="mc_samples"):
        fk.fisher(m, (X, None), kind="mc", mc_samples=0)


def test_empirical_without_labels(mlp):
    m, X = mlp
    with pytest.raises(fk.FisherkitError, match="needs labels"):
        fk.fisher(m, (X, None), kind="empirical")


def test_wrong_vector_length(mlp):
    m, X = mlp
    F = fk.fisher(m, (X, None))
    with pytest.raises(fk.errors.ShapeError, match="43 entries"):
        F.mv(torch.zeros(5, dtype=torch.float64))


def test_no_trainable_parameters(mlp):
    m, X = mlp
    for p in m.parameters():
        p.requires_grad_(False)
    with pytest.raises(fk.FisherkitError, match="no trainable parameters"):
        fk.fisher(m, (X, None))


@pytest.mark.parametrize("structure", ["diag", "block", "kfac", "ekfac"])
def test_output_directions_are_chunked_to_the_memory_budget(structure, monkeypatch):
    """A tiny max_memory splits the C·T backward directions into chunks; the Fisher does not change."""
    from fisherkit.engine import collect

    m, X = make("tokens", out=4)  # per-token logits: D = T·(C − 1) = 9 directions per batch (rank of Λ: C − 1)
    seen = []
    real = collect.output_grads

    def spy(out, zs, v, retain=False):
        seen.append(v.shape[0])
        return real(out, zs, v, retain)

    ref = fk.fisher(m, (X, None), structure=structure)
    monkeypatch.setattr(collect, "output_grads", spy)
    small = fk.fisher(m, (X, None), structure=structure, max_memory=3 * 8 * 5 * 3 * 4 * 5)
    assert max(seen) < 9 and sum(seen) % 9 == 0  # chunks, and every direction went through
    assert small.num_samples == ref.num_samples == len(X)
    assert torch.allclose(small.to_dense(), ref.to_dense(), rtol=1e-10, atol=1e-14)
