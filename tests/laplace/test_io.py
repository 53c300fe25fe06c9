"""Save/load: the loaded posterior gives the same numbers; another model's file is refused; writes are atomic."""

import os

import pytest
import torch

import fisherkit as fk
from fisherkit.laplace import Laplace, LaplaceError, NotFittedError

from .laplace_fixtures import mlp


@pytest.mark.parametrize("structure,subset", [("kfac", "all"), ("diag", "last_layer"), ("dense", "all"), ("lowrank", "all"),
                                              ("ekfac", "last_layer")])
def test_round_trip(tmp_path, structure, subset):
    m, X, y = mlp()
    la = Laplace(m, "categorical", subset=subset, structure=structure, prior_precision=0.3).fit((X, y))
    la.optimize_prior_precision("grid", grid=[0.1, 1.0, 10.0])
    la.save(tmp_path / "la.safetensors")
    lb = fk.laplace.load(tmp_path / "la.safetensors", m)
    assert float(lb.log_marginal_likelihood()) == float(la.log_marginal_likelihood())
    torch.testing.assert_close(lb.predictive(X[:4]), la.predictive(X[:4]), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(lb.sample(3), la.sample(3), rtol=1e-12, atol=1e-14)
    assert lb.subset == la.subset and lb.n_data == la.n_data


def test_refuses_another_model(tmp_path):
    m, X, y = mlp()
    la = Laplace(m, "categorical", structure="diag").fit((X, y))
    la.save(tmp_path / "la.safetensors")
    other, _, _ = mlp(h=6)
    with pytest.raises(fk.FisherkitError, match="does not match"):
        Laplace.load(tmp_path / "la.safetensors", other)
    F = fk.fisher(m, (X, y))
    F.save(tmp_path / "f.safetensors")
    with pytest.raises(LaplaceError, match="not a fisherkit Laplace file"):
        Laplace.load(tmp_path / "f.safetensors", m)


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    m, X, y = mlp()
    la = Laplace(m, "categorical", structure="diag").fit((X, y))
    la.save(tmp_path / "la.safetensors")
    before = (tmp_path / "la.safetensors").read_bytes()
    import safetensors.torch

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    la.prior_precision = torch.tensor(5.0, dtype=torch.float64)
    with pytest.raises(OSError):
        la.save(tmp_path / "la.safetensors")
    assert os.listdir(tmp_path) == ["la.safetensors"]
    assert (tmp_path / "la.safetensors").read_bytes() == before


def test_save_before_fit(tmp_path):
    m, _, _ = mlp()
    with pytest.raises(NotFittedError):
        Laplace(m).save(tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_corrupt_metadata_and_newer_format_are_named(tmp_path):
    """The shared read_state checks, raised as LaplaceError: a newer format version, unreadable JSON."""
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    m, X, y = mlp()
    la = Laplace(m, "categorical", structure="diag").fit((X, y))
    la.save(tmp_path / "la.safetensors")
    with safe_open(str(tmp_path / "la.safetensors"), framework="pt") as f:
        header = dict(f.metadata())
    tensors = load_file(str(tmp_path / "la.safetensors"))
    save_file(tensors, str(tmp_path / "newer.safetensors"), metadata={**header, "format_version": "99"})
    with pytest.raises(LaplaceError, match="newer fisherkit"):
        Laplace.load(tmp_path / "newer.safetensors", m)
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata={**header, "meta": "{not json"})
    with pytest.raises(LaplaceError, match="not valid JSON"):
        Laplace.load(tmp_path / "bad.safetensors", m)
