"""What users pass as data: a DataLoader, a tensor pair, an iterable of batches — the same Fisher."""

import torch
from torch.utils.data import DataLoader, TensorDataset

import fisherkit as fk
from models import labels, make


def test_dataloader_pair_and_list_of_batches_agree():
    m, X = make("mlp")
    y = labels(m, X, "categorical")
    ref = fk.fisher(m, (X, y), kind="empirical", structure="dense").to_dense()
    loader = DataLoader(TensorDataset(X, y), batch_size=4)
    a = fk.fisher(m, loader, kind="empirical", structure="dense", progress=True).to_dense()
    b = fk.fisher(m, [(X[:2], y[:2]), (X[2:], y[2:])], kind="empirical", structure="dense").to_dense()
    assert torch.allclose(a, ref, rtol=1e-12, atol=1e-15) and torch.allclose(b, ref, rtol=1e-12, atol=1e-15)


def test_float32_model_gets_float32_fisher_from_float64_data():
    m, X = make("mlp")
    m = m.float()
    F = fk.fisher(m, (X, None), structure="kfac")  # float64 inputs are cast to the model's dtype
    assert F.dtype == torch.float32 and F.diag().dtype == torch.float32
