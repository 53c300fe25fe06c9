"""Structured (row) pruning: KFAC-OBS across rows against the KKT minimiser on the dense G ⊗ A, unit costs, shapes."""

import pytest
import torch

import fisherkit as fk
from fisherkit.prune import PruneError, masks, prune

from .conftest import data, kkt, mlp


def _damped(m, d):
    return m + d * m.diagonal().mean() * torch.eye(m.shape[0], dtype=m.dtype)


def test_kfac_rows_equal_kkt_on_the_dense_kronecker_fisher():
    """Remove 3 of 8 neurons of layer 1 (group_size 1): the new [W | b] equals the minimiser of
    ½ vec(Δ)ᵀ (G⊗A) vec(Δ) with the removed rows' weights at −W (biases and other rows free), solved as
    one KKT system on torch.kron(G, A); and the chosen rows are a greedy sequence whose each step is the
    cheapest by enumeration."""
    net, (X, y) = mlp(), data()
    K = fk.fisher(net, (X, y), structure="kfac")
    A, G = K.factors()["0.weight"]
    Ad, Gd = _damped(A, 1e-2), _damped(G, 1e-2)
    H = torch.kron(Gd, Ad)
    p = prune(net, sparsity=3 / 8, method="kfac", structured="rows", params=["0.weight"], fisher=K, damping=1e-2)
    M = torch.cat([net[0].weight, net[0].bias[:, None]], 1).detach()
    O, I = M.shape
    gone = (~masks(p)["0.weight"]).all(1).nonzero().reshape(-1).tolist()
    assert len(gone) == 3 and bool((masks(p)["0.weight"][gone] == 0).all())

    def coords(rows):
        return [o * I + i for o in rows for i in range(I - 1)]

    d_ref, _ = kkt(H, M.reshape(-1), coords(gone))
    Mp = torch.cat([p[0].weight, p[0].bias[:, None]], 1).detach()
    torch.testing.assert_close(Mp.reshape(-1), M.reshape(-1) + d_ref, rtol=1e-7, atol=1e-9)
    # greedy: the first row removed is the one whose KKT removal costs least
    costs = [float(kkt(H, M.reshape(-1), coords([o]))[1]) for o in range(O)]
    assert int(torch.tensor(costs).argmin()) in gone


def test_magnitude_rows_and_heads():
    net = mlp()
    p = prune(net, sparsity=0.5, method="magnitude", structured="rows", scope="layer")
    norms = net[0].weight.detach().pow(2).sum(1)
    gone = (~masks(p)["0.weight"]).all(1)
    assert set(gone.nonzero().reshape(-1).tolist()) == set(torch.argsort(norms)[:4].tolist())
    q = prune(net, sparsity=0.5, method="magnitude", structured="rows", group_size=4, params=["0.weight"])
    rows = (~masks(q)["0.weight"]).all(1).reshape(2, 4)
    assert rows.all(1).sum() == 1 and (rows.any(1) == rows.all(1)).all()  # one whole group of 4 rows


def test_structured_bad_input():
    net, d = mlp(), data()
    with pytest.raises(PruneError, match="group_size=3"):
        prune(net, d, sparsity=0.5, method="kfac", structured="rows", group_size=3)
    with pytest.raises(PruneError, match="WoodFisher"):
        prune(net, d, sparsity=0.5, method="woodfisher", structured="rows")
    with pytest.raises(PruneError, match="structured"):
        prune(net, d, sparsity=0.5, method="kfac", structured="columns")
