"""Saving and loading Fishers: safetensors (no pickle) + versioned JSON metadata, written atomically."""

from __future__ import annotations

import json
import os
import socket
import stat
import tempfile
from pathlib import Path

import torch

from .._version import __version__
from ..errors import FisherkitError
from ..params import ParamInfo
from .blocks import DenseBlock, DiagBlock, EKronBlock, KronBlock, SumBlock

FORMAT_VERSION = 1
_BLOCKS = {"dense": DenseBlock, "diag": DiagBlock, "kron": KronBlock, "ekron": EKronBlock}


TEMP_TAG = "fisherkit-tmp"  # temp files: .<name>.fisherkit-tmp.<host>.<pid>.<random>


def _temp_prefix(name: str) -> str:
    return f".{name}.{TEMP_TAG}.{socket.gethostname().replace('.', '_')}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's live process (or cannot tell): keep its file
    return True


def remove_stale_temps(folder) -> list[Path]:
    """Delete this host's fisherkit temp files in ``folder`` whose writing process is dead (a save
    killed mid-write, e.g. by ``kill -9``); files of live processes and of other hosts are kept.
    Best effort: a file that cannot be removed (read-only folder) is left. Returns what was removed."""
    host = socket.gethostname().replace(".", "_")
    removed = []
    try:
        entries = list(Path(folder).glob(f".*.{TEMP_TAG}.*.tmp"))
    except OSError:
        return removed
    for f in entries:
        parts = f.name[: -len(".tmp")].split(f".{TEMP_TAG}.", 1)
        fields = parts[1].split(".") if len(parts) == 2 else []
        if len(fields) != 3 or fields[0] != host or not fields[1].isdigit() or _pid_alive(int(fields[1])):
            continue
        try:
            f.unlink()
            removed.append(f)
        except OSError:
            pass
    return removed


def _target(path: Path) -> Path:
    """Where a save lands, decided as ``torch.save`` / ``numpy.save`` / safetensors' ``save_file`` do
    (they ``open(path, "wb")``): through a symlink to the file it points at (the link is kept);
    a read-only file or a missing or read-only folder is an error — never silently replaced or
    created. Returns the real path of the file to replace."""
    real = Path(os.path.realpath(path))
    folder = real.parent
    if not folder.is_dir():
        raise FisherkitError(f"cannot save {path}: the folder {folder} does not exist; create it first "
                             "(fisherkit does not create folders, like torch.save and numpy.save)")
    if real.is_dir():
        raise FisherkitError(f"cannot save {path}: it is a folder; pass a file path")
    if real.exists() and (not os.access(real, os.W_OK) or not real.stat().st_mode & 0o222):  # root: the mode bits
        raise FisherkitError(f"cannot save {path}: the file is read-only (mode {stat.S_IMODE(real.stat().st_mode):o}); "
                             "make it writable (chmod u+w) or save to another path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise FisherkitError(f"cannot save {path}: the folder {folder} is not writable (permission denied); "
                             "save to another folder")
    return real


def atomic_write(path, write) -> None:
    """Write a file atomically: ``write(tmp_path)`` fills a temp file in the target's folder, which
    is fsynced, given ordinary permissions (those of the file it replaces, else 0666 & ~umask —
    not ``mkstemp``'s 0600) and renamed over the target. On any failure the temp file is removed;
    temp files left by killed processes in that folder are removed first (``remove_stale_temps``).
    Symlinks, read-only files and missing folders: see ``_target``."""
    path = Path(path)
    real = _target(path)
    remove_stale_temps(real.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(real.name), suffix=".tmp", dir=real.parent)
    except PermissionError:
        raise FisherkitError(f"cannot save {path}: the folder {real.parent} is not writable (permission denied)") from None
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if real.exists():
            mode = stat.S_IMODE(real.stat().st_mode)
        else:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        os.replace(tmp, real)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, PermissionError):
            raise FisherkitError(f"cannot save {path}: permission denied ({e.strerror})") from None
        raise  # other OSErrors (disk full, ...) keep their type: not a user mistake; the target is unchanged


def atomic_write_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path) -> None:
    """Write a safetensors file atomically (``atomic_write``: temp file, fsync, rename)."""
    from safetensors.torch import save_file

    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(cpu, tmp, metadata=metadata))


def read_safetensors(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read all tensors and the metadata of a safetensors file; a clear error for a bad file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise FisherkitError(f"no such file: {path}")
    remove_stale_temps(Path(os.path.realpath(path)).parent)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for truncated / corrupt headers
        raise FisherkitError(f"{path} is not a readable safetensors file (truncated or corrupt?): {e}") from None
    return tensors, meta


def write_state(tensors: dict[str, torch.Tensor], path, fmt: str, version: int, **fields) -> None:
    """Atomically write a versioned fisherkit state: ``fields`` are stored as JSON in the metadata."""
    header = {"format": fmt, "format_version": str(version), "fisherkit_version": __version__}
    header.update({k: json.dumps(v) for k, v in fields.items()})
    atomic_write_safetensors(tensors, header, path)


def read_state(path, fmt: str, version: int, what: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a file written by ``write_state``: refuses another format or a newer version, and parses
    the JSON fields (a corrupt one is named). Returns (tensors, fields incl. ``format_version``)."""
    tensors, header = read_safetensors(path)
    if header.get("format") != fmt:
        raise FisherkitError(f"{path} is not a {what} file (format={header.get('format')!r})")
    try:
        got = int(header.get("format_version", "0"))
    except ValueError:
        raise FisherkitError(f"{path} has an unreadable format version {header.get('format_version')!r}") from None
    if got > version:
        raise FisherkitError(f"{path} was written by a newer fisherkit ({what} format {got}; this one reads {version})")
    fields = {"format_version": got}
    for k, v in header.items():
        if k in ("format", "format_version", "fisherkit_version"):
            continue
        try:
            fields[k] = json.loads(v)
        except ValueError:
            raise FisherkitError(f"{path}: the metadata entry {k!r} is not valid JSON (a corrupt or hand-edited "
                                 "file?); save it again") from None
    return tensors, fields


def _block_state(prefix: str, b, tensors: dict, descs: list) -> None:
    if isinstance(b, SumBlock):
        sub = []
        for j, t in enumerate(b.terms):
            _block_state(f"{prefix}.t{j}", t, tensors, sub)
        descs.append({"kind": "sum", "terms": sub})
        return
    ts, extra = b.state()
    for k, v in ts.items():
        tensors[f"{prefix}.{k}"] = v
    descs.append({"kind": b.kind, "names": b.names, "numels": b.numels, "prefix": prefix, "extra": extra})


def to_tensors(curv, prefix: str = "") -> tuple[dict[str, torch.Tensor], dict]:
    """A curvature as (tensors named ``prefix…``, JSON-able metadata): what ``save`` writes, and what
    other state files (EWC) embed. Inverse: ``from_tensors``."""
    meta = curv.metadata()
    tensors: dict[str, torch.Tensor] = {}
    if curv.structure == "lowrank":
        tensors = {f"{prefix}values": curv.values, f"{prefix}vectors": curv.vectors}
    else:
        descs: list = []
        for i, b in enumerate(curv.blocks):
            _block_state(f"{prefix}b{i}", b, tensors, descs)
        meta["blocks"] = descs
    return tensors, meta


def from_tensors(meta: dict, tensors: dict[str, torch.Tensor], prefix: str = "", where: str = "this state"):
    """The curvature ``to_tensors`` described (tensors already on the wanted device and dtype).

    Every tensor's shape is checked against the parameters it covers (``check_shapes``) and every
    value must be finite, so a corrupt or hand-edited state is refused here and not at ``mv``."""
    from . import STRUCTURES

    if not isinstance(meta, dict) or meta.get("structure") not in STRUCTURES or meta["structure"] == "implicit":
        raise FisherkitError(f"{where}: unknown saved structure {(meta or {}).get('structure')!r}")
    try:
        info = ParamInfo(list(meta["names"]), [tuple(s) for s in meta["shapes"]])
        args = (info, meta["num_samples"], meta["kind"], meta["likelihood"])
        cls = STRUCTURES[meta["structure"]]
        if meta["structure"] == "lowrank":
            vals, vecs = tensors[f"{prefix}values"], tensors[f"{prefix}vectors"]
            if vals.dim() != 1 or tuple(vecs.shape) != (info.size, vals.shape[0]):
                raise FisherkitError(f"lowrank values {tuple(vals.shape)} / vectors {tuple(vecs.shape)} have the wrong "
                                     f"shape for {info.size} parameters")
            curv = cls(*args, vals, vecs)
        else:
            curv = cls(*args, [_make_block(d, tensors) for d in meta["blocks"]])
    except FisherkitError as e:
        raise FisherkitError(f"{where} is corrupt: {e}; save it again") from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise FisherkitError(f"{where} is incomplete or corrupt ({type(e).__name__}: {e}); save it again") from None
    check_shapes(curv, where)
    return curv


def _expected_shapes(b) -> dict[str, tuple]:
    """The shape each tensor of block ``b`` must have, from the parameters it covers."""
    n = b.size
    if b.kind == "dense":
        return {"matrix": (n, n)}
    if b.kind == "diag":
        return {"values": (n,)}
    o = int(b.out_features)
    i = n // o if o > 0 and n % o == 0 else -1
    if b.kind == "kron":
        return {"A": (i, i), "G": (o, o)}
    return {"QA": (i, i), "QG": (o, o), "S": (o, i)}


def _block_problems(b, numels: dict, out: list) -> None:
    if isinstance(b, SumBlock):
        for t in b.terms:
            _block_problems(t, numels, out)
        return
    for n, k in zip(b.names, b.numels):
        if numels.get(n) != k:
            out.append(f"the block of {n!r} covers {k} values but the parameter has {numels.get(n)}")
    for field_name, want in _expected_shapes(b).items():
        t = getattr(b, field_name)
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != want:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            out.append(f"{b.kind} tensor {field_name!r} of {b.names} has shape {got}, expected {want}")
        elif not torch.is_floating_point(t) or not bool(torch.isfinite(t).all()):
            out.append(f"{b.kind} tensor {field_name!r} of {b.names} is not finite floating point")


def check_shapes(curv, where: str = "this Fisher") -> None:
    """Raise ``FisherkitError`` listing every tensor of ``curv`` whose shape does not fit the
    parameters it covers, or whose values are not finite (a corrupt or hand-edited file)."""
    numels = dict(zip(curv.info.names, curv.info.numels))
    problems: list[str] = []
    if curv.structure == "lowrank":
        vals, vecs = curv.values, curv.vectors
        if vals.dim() != 1 or vecs.dim() != 2 or tuple(vecs.shape) != (curv.info.size, vals.shape[0]):
            problems.append(f"lowrank values {tuple(vals.shape)} / vectors {tuple(vecs.shape)} do not fit "
                            f"{curv.info.size} parameters")
        elif not (bool(torch.isfinite(vals).all()) and bool(torch.isfinite(vecs).all())):
            problems.append("lowrank values or vectors are not finite")
    else:
        for b in curv.blocks:
            _block_problems(b, numels, problems)
    if problems:
        raise FisherkitError(f"{where} is corrupt: " + "; ".join(problems[:6]) + "; save it again")


def save(curv, path) -> None:
    tensors, meta = to_tensors(curv)
    write_state(tensors, path, "fisherkit.curvature", FORMAT_VERSION, meta=meta)


def _make_block(desc, tensors):
    if desc["kind"] == "sum":
        return SumBlock([_make_block(d, tensors) for d in desc["terms"]])
    cls = _BLOCKS[desc["kind"]]
    fields = {"dense": ["matrix"], "diag": ["values"], "kron": ["A", "G"], "ekron": ["QA", "QG", "S"]}[desc["kind"]]
    args = [tensors[f"{desc['prefix']}.{f}"] for f in fields]
    if desc["kind"] in ("kron", "ekron"):
        return cls(desc["names"], desc["numels"], desc["extra"]["out_features"], desc["extra"]["has_bias"], *args,
                   transposed=bool(desc["extra"].get("transposed", False)))
    return cls(desc["names"], desc["numels"], *args)


def check_against_model(names: list[str], shapes: list[tuple], model: torch.nn.Module, what: str,
                        exact: bool = False) -> None:
    """Raise listing every difference between saved parameter names/shapes and the model's
    (``exact``: also parameters the model has and the file does not)."""
    have = {n: tuple(p.shape) for n, p in model.named_parameters()}
    problems = []
    for n, s in zip(names, shapes):
        if n not in have:
            problems.append(f"{n} is not in the model")
        elif tuple(s) != have[n]:
            problems.append(f"{n} has shape {tuple(s)} in the file but {have[n]} in the model")
    if exact:
        problems += [f"the model has {n} {have[n]}, the file's model did not" for n in have if n not in set(names)]
    if problems:
        raise FisherkitError(f"{what} does not match this model: " + "; ".join(problems[:10]))


def load(path, model: torch.nn.Module | None = None, map_location=None):
    """Load a Fisher saved by ``F.save(path)``.

    With ``model``, the file's parameter names and shapes must match it (else an error lists the
    differences) and tensors land on the model's device and dtype; ``map_location`` overrides the
    device.
    """
    tensors, fields = read_state(path, "fisherkit.curvature", FORMAT_VERSION, "fisherkit Fisher")
    meta = fields.get("meta")
    if not isinstance(meta, dict) or not isinstance(meta.get("names"), list) or not isinstance(meta.get("shapes"), list):
        raise FisherkitError(f"{path} has no readable Fisher metadata; save it again")
    shapes = [tuple(s) for s in meta["shapes"]]
    device, dtype = map_location, None
    if model is not None:
        check_against_model(meta["names"], shapes, model, f"the Fisher in {path}")
        p0 = next(model.parameters())
        device = device or p0.device
        dtype = p0.dtype
    tensors = {k: v.to(device=device or "cpu", dtype=dtype or v.dtype) for k, v in tensors.items()}
    return from_tensors(meta, tensors, where=f"the Fisher in {path}")
