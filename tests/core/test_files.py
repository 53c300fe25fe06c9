"""Saving and loading files: what a failed or killed save leaves, and the deliberate decisions for
symlinks, read-only files, missing and read-only folders (those of ``torch.save`` / ``numpy.save`` /
safetensors' ``save_file``, which ``open(path, "wb")``: write through a symlink, refuse a read-only
file and a missing folder). Also: corrupt metadata and tensors of other shapes are refused at load.
"""

import json
import os
import stat
import subprocess
import sys
import textwrap

import pytest
import torch

import fisherkit as fk
from fisherkit.curvature import io
from models import make


@pytest.fixture(scope="module")
def fishers():
    m, X = make("mlp")
    return m, {s: fk.fisher(m, (X, None), structure=s, rank=3) for s in ("diag", "kfac", "dense", "lowrank")}


def temps(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def killed_save(folder, name="f.safetensors"):
    """A process that dies (os._exit, like kill -9) half-way through writing ``folder/name``."""
    code = textwrap.dedent(f"""
        import os
        from fisherkit.curvature import io
        def half(tmp):
            with open(tmp, "wb") as f:
                f.write(b"x" * 4096)
            os._exit(9)
        io.atomic_write({str(folder / name)!r}, half)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert r.returncode == 9, r.stderr.decode()


def test_next_save_removes_the_temp_file_of_a_killed_save(tmp_path, fishers):
    _, F = fishers
    killed_save(tmp_path)
    left = temps(tmp_path)
    assert len(left) == 1 and left[0].startswith(".f.safetensors.fisherkit-tmp.")  # recognisable, with host and pid
    F["diag"].save(tmp_path / "other.safetensors")  # any save in that folder
    assert temps(tmp_path) == []


def test_next_load_removes_the_temp_file_of_a_killed_save(tmp_path, fishers):
    m, F = fishers
    F["diag"].save(tmp_path / "f.safetensors")
    killed_save(tmp_path)
    assert len(temps(tmp_path)) == 1
    fk.load(tmp_path / "f.safetensors", model=m)
    assert temps(tmp_path) == []


def test_temp_files_of_live_processes_and_other_files_are_kept(tmp_path, fishers):
    _, F = fishers
    live = tmp_path / f".a.{io.TEMP_TAG}.{io.socket.gethostname().replace('.', '_')}.{os.getpid()}.x1.tmp"
    other_host = tmp_path / f".a.{io.TEMP_TAG}.some-other-host.1.x2.tmp"
    foreign = tmp_path / ".a.12345.tmp"  # not ours (no fisherkit tag)
    for p in (live, other_host, foreign):
        p.write_bytes(b"partial")
    F["diag"].save(tmp_path / "f.safetensors")
    assert sorted(p.name for p in (live, other_host, foreign)) == temps(tmp_path)


def test_a_failed_save_leaves_no_temp_file_and_the_old_file(tmp_path, fishers, monkeypatch):
    _, F = fishers
    path = tmp_path / "f.safetensors"
    F["kfac"].save(path)
    before = path.read_bytes()

    def boom(tmp):
        open(tmp, "wb").write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        io.atomic_write(path, boom)
    assert path.read_bytes() == before and temps(tmp_path) == []


def test_save_through_a_symlink_keeps_the_link(tmp_path, fishers):
    """Decision (as torch.save / numpy.save / save_file): write through the link; the link stays."""
    m, F = fishers
    real = tmp_path / "store" / "fisher.safetensors"
    real.parent.mkdir()
    F["diag"].save(real)
    link = tmp_path / "latest.safetensors"
    link.symlink_to(real)
    (2.0 * F["diag"]).save(link)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert torch.allclose(fk.load(real, model=m).diag(), 2 * F["diag"].diag())
    assert temps(real.parent) == [] and temps(tmp_path) == []


def test_a_dangling_symlink_creates_its_target(tmp_path, fishers):
    m, F = fishers
    link = tmp_path / "link.safetensors"
    link.symlink_to(tmp_path / "target.safetensors")
    F["diag"].save(link)
    assert link.is_symlink() and (tmp_path / "target.safetensors").is_file()


def test_read_only_file_is_refused_and_kept(tmp_path, fishers):
    """Decision: a file without write permission is not replaced (even by root, for whom open() would
    succeed: a write-protected file is a deliberate choice of its owner)."""
    _, F = fishers
    path = tmp_path / "f.safetensors"
    F["diag"].save(path)
    before = path.read_bytes()
    path.chmod(0o444)
    with pytest.raises(fk.FisherkitError, match=r"f.safetensors: the file is read-only .*chmod u\+w"):
        (3.0 * F["diag"]).save(path)
    assert path.read_bytes() == before and stat.S_IMODE(path.stat().st_mode) == 0o444
    assert temps(tmp_path) == []


def test_replacing_a_file_keeps_its_mode_and_a_new_file_gets_the_umask(tmp_path, fishers):
    _, F = fishers
    path = tmp_path / "f.safetensors"
    F["diag"].save(path)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    path.chmod(0o640)
    F["diag"].save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_missing_folder_is_refused_not_created(tmp_path, fishers):
    """Decision (as torch.save / numpy.save / save_file): no folder is created silently."""
    _, F = fishers
    target = tmp_path / "no" / "such" / "f.safetensors"
    with pytest.raises(fk.FisherkitError, match=r"the folder .*no/such does not exist; create it first"):
        F["diag"].save(target)
    assert not (tmp_path / "no").exists()


def test_read_only_folder_names_the_target_not_the_temp_file(tmp_path, fishers, monkeypatch):
    _, F = fishers
    folder = tmp_path / "ro"
    folder.mkdir()
    target = folder / "f.safetensors"
    if os.geteuid() != 0:  # a real read-only folder (root may write anyway)
        folder.chmod(0o555)
        try:
            with pytest.raises(fk.FisherkitError, match="f.safetensors: the folder .* is not writable") as e:
                F["diag"].save(target)
        finally:
            folder.chmod(0o755)
    else:  # root: the OS refusal is simulated where it happens, at the temp file
        def denied(*a, **k):
            raise PermissionError(13, "Permission denied", str(folder / ".f.safetensors.xyz.tmp"))

        monkeypatch.setattr(io.tempfile, "mkstemp", denied)
        with pytest.raises(fk.FisherkitError, match="cannot save .*f.safetensors: the folder .* is not writable") as e:
            F["diag"].save(target)
    assert ".tmp" not in str(e.value) and not target.exists()


def test_permission_denied_at_rename_names_the_target(tmp_path, fishers, monkeypatch):
    _, F = fishers
    target = tmp_path / "f.safetensors"

    def denied(src, dst):
        raise PermissionError(13, "Permission denied", src)

    monkeypatch.setattr(io.os, "replace", denied)
    with pytest.raises(fk.FisherkitError, match="cannot save .*f.safetensors: permission denied") as e:
        F["diag"].save(target)
    assert ".tmp" not in str(e.value) and temps(tmp_path) == []


def _rewrite(path, meta_text=None, tensor_edit=None):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        header = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if meta_text is not None:
        header["meta"] = meta_text
    if tensor_edit is not None:
        tensor_edit(tensors)
    save_file(tensors, str(path), metadata=header)


def test_corrupt_json_metadata_is_named(tmp_path, fishers):
    m, F = fishers
    path = tmp_path / "f.safetensors"
    F["kfac"].save(path)
    _rewrite(path, meta_text='{"structure": "kfac", "names": [')
    with pytest.raises(fk.FisherkitError, match="'meta' is not valid JSON"):
        fk.load(path, model=m)


def _shrink_first(t):
    k = sorted(t)[0]
    t[k] = t[k][:-1].clone() if t[k].dim() == 1 else t[k][:-1, :].clone()


@pytest.mark.parametrize("structure", ["diag", "kfac", "dense", "lowrank"])
def test_tensor_of_another_shape_is_refused_at_load(tmp_path, fishers, structure):
    m, F = fishers
    path = tmp_path / "f.safetensors"
    F[structure].save(path)
    _rewrite(path, tensor_edit=_shrink_first)
    with pytest.raises(fk.FisherkitError, match="is corrupt: .*shape"):
        fk.load(path, model=m)


def test_non_finite_tensor_is_refused_at_load(tmp_path, fishers):
    m, F = fishers
    path = tmp_path / "f.safetensors"
    F["diag"].save(path)

    def nan(t):
        k = sorted(t)[0]
        t[k] = t[k].clone()
        t[k].view(-1)[0] = float("nan")

    _rewrite(path, tensor_edit=nan)
    with pytest.raises(fk.FisherkitError, match="not finite"):
        fk.load(path, model=m)


def test_metadata_without_shapes_is_named(tmp_path, fishers):
    m, F = fishers
    path = tmp_path / "f.safetensors"
    F["diag"].save(path)
    _rewrite(path, meta_text=json.dumps({"names": ["0.weight"]}))
    with pytest.raises(fk.FisherkitError, match="no readable Fisher metadata"):
        fk.load(path, model=m)
