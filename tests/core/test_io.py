"""save → load round-trips for every stored structure; mismatched models and corrupt files are refused."""

import json

import pytest
import torch

import fisherkit as fk
from models import labels, make


@pytest.mark.parametrize("s", ["dense", "diag", "block", "kfac", "ekfac", "lowrank"])
def test_round_trip(tmp_path, s):
    m, X = make("cnn")
    y = labels(m, X, "categorical")
    F = fk.fisher(m, (X, y), structure=s, kind="empirical", rank=4)
    path = tmp_path / f"{s}.safetensors"
    F.save(path)
    G = fk.load(path, model=m)
    assert type(G) is type(F) and G.num_samples == F.num_samples and G.kind == "empirical"
    assert torch.allclose(G.to_dense(), F.to_dense(), rtol=1e-13, atol=1e-15)
    assert G.likelihood == {"name": "categorical"}
    # no pickle anywhere: the file is a plain safetensors file with JSON metadata
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "fisherkit.curvature" and json.loads(meta["meta"])["structure"] == s
    assert meta["fisherkit_version"] == fk.__version__


def test_sum_of_kfac_round_trips(tmp_path):
    m, X = make("mlp")
    y = labels(m, X, "categorical")
    F = fk.fisher(m, (X, y), structure="kfac") + fk.fisher(m, (X[:4], y[:4]), structure="kfac")
    F.save(tmp_path / "sum.safetensors")
    assert torch.allclose(fk.load(tmp_path / "sum.safetensors", m).to_dense(), F.to_dense())


def test_load_follows_model_dtype_and_map_location(tmp_path):
    m, X = make("mlp")
    F = fk.fisher(m, (X, None), structure="diag")
    F.save(tmp_path / "f.safetensors")
    m32 = make("mlp")[0].float()
    G = fk.load(tmp_path / "f.safetensors", model=m32)
    assert G.dtype == torch.float32
    H = fk.load(tmp_path / "f.safetensors", map_location="cpu")
    assert H.dtype == torch.float64 and H.device.type == "cpu"


def test_other_model_is_refused_with_the_differences(tmp_path):
    m, X = make("mlp")
    fk.fisher(m, (X, None), structure="diag").save(tmp_path / "f.safetensors")
    other = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()
    with pytest.raises(fk.FisherkitError, match=r"0.weight has shape \(5, 4\) in the file but \(6, 4\)"):
        fk.load(tmp_path / "f.safetensors", model=other)


def test_corrupt_and_truncated_files(tmp_path):
    m, X = make("mlp")
    p = tmp_path / "f.safetensors"
    fk.fisher(m, (X, None), structure="dense").save(p)
    data = p.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(fk.FisherkitError, match="truncated or corrupt"):
        fk.load(tmp_path / "trunc.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(fk.FisherkitError):
        fk.load(tmp_path / "junk.safetensors")
    with pytest.raises(fk.FisherkitError, match="no such file"):
        fk.load(tmp_path / "missing.safetensors")


def test_atomic_write_keeps_old_file_when_writing_fails(tmp_path, monkeypatch):
    m, X = make("mlp")
    p = tmp_path / "f.safetensors"
    F = fk.fisher(m, (X, None), structure="diag")
    F.save(p)
    before = p.read_bytes()
    import safetensors.torch

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError):
        (2.0 * F).save(p)
    assert p.read_bytes() == before
    assert [q.name for q in tmp_path.iterdir()] == ["f.safetensors"]  # no temp file left behind


def test_implicit_cannot_be_saved(tmp_path):
    m, X = make("mlp")
    with pytest.raises(fk.FisherkitError, match="implicit"):
        fk.fisher(m, (X, None), structure="implicit").save(tmp_path / "x.safetensors")


def test_saved_file_has_ordinary_permissions(tmp_path):
    import os
    import stat

    m, X = make("mlp")
    p = tmp_path / "f.safetensors"
    fk.fisher(m, (X, None), structure="diag").save(p)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask
