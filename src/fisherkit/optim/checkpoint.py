"""Saving a ``NaturalGradient`` to disk: safetensors (no pickle), written atomically, versioned metadata.

Tensors: the curvature (``pre.<i>.<kind>.<name>``), the momentum buffers (``momentum.<param>``), the
grafting second moments (``graft.<param>``, with ``graft="adam"``) and
the Monte-Carlo generator state (``generator``). Metadata (JSON): format name and version, the
fisherkit version, structure, kind, parameter names and shapes, counters, damping and the param
groups' hyper-parameters. ``load`` refuses a file written for other parameters or another structure.
"""

from __future__ import annotations

import math

import torch

from ..choices import check_fraction, check_positive
from ..curvature.io import read_state, write_state
from ..errors import FisherkitError, NonFiniteError

FORMAT = "fisherkit.optim.NaturalGradient"
FORMAT_VERSION = 3  # 2: the curvature as the one stack's Curvature tensors (``Preconditioner.state_dict``)
# 3: + the second moments of grafting (``graft.<param>``) and of ``KFACEigenAdam`` (``eigen.<param>``, the
#    layer's [out, in+1] matrix in the eigenbasis); a version-2 file (neither) still loads
READABLE = (2, 3)


def save(opt, path) -> None:
    """Write ``opt``'s full state to ``path`` (safetensors)."""
    pre = opt.pre.state_dict()
    tensors = {f"pre.{k}": v for k, v in pre["tensors"].items()}
    tensors["generator"] = pre["generator"]
    for n, p in opt.params.items():
        buf = opt.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            tensors[f"momentum.{n}"] = buf
        for key, prefix in (("graft_v", "graft"), ("eigen_v", "eigen")):
            v = opt.state.get(p, {}).get(key)
            if v is not None:
                tensors[f"{prefix}.{n}"] = v
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    meta = {"structure": pre["structure"], "kind": pre["kind"], "names": pre["names"], "layout": pre["layout"],
            "shapes": [list(s) for s in opt.pre.info.shapes], "steps": pre["steps"], "updates": pre["updates"],
            "damping": pre["damping"], "skipped_steps": opt.skipped_steps, "param_groups": groups}
    write_state(tensors, path, FORMAT, FORMAT_VERSION, meta=meta)


def check_hyperparameters(groups, where: str) -> None:
    """Raise unless every param group's lr > 0, momentum in [0, 1), weight_decay >= 0 (all finite) and nesterov,
    where given, a bool."""
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise FisherkitError(f"{where}: the param groups are not a list of dicts; nothing was loaded")
    try:
        for g in groups:
            check_positive("lr", g.get("lr"))
            check_fraction("momentum", g.get("momentum", 0.0))
            if not isinstance(g.get("nesterov", False), bool):
                raise FisherkitError(f"nesterov must be True or False; got {g['nesterov']!r}")
            wd = g.get("weight_decay", 0.0)
            if isinstance(wd, bool) or not isinstance(wd, (int, float)) or not math.isfinite(wd) or wd < 0:
                raise FisherkitError(f"weight_decay must be a finite number >= 0; got {wd!r}")
    except FisherkitError as e:
        raise FisherkitError(f"{where} has a bad hyper-parameter: {e}; nothing was loaded") from None


def check_momentum(name: str, buf, param: torch.Tensor, where: str) -> None:
    """A momentum buffer must be a finite floating tensor of its parameter's shape."""
    if not isinstance(buf, torch.Tensor) or tuple(buf.shape) != tuple(param.shape):
        got = tuple(buf.shape) if isinstance(buf, torch.Tensor) else type(buf).__name__
        raise FisherkitError(f"{where}: the momentum buffer of {name!r} has shape {got}; the parameter has "
                             f"{tuple(param.shape)}; nothing was loaded")
    if not torch.is_floating_point(buf) or not bool(torch.isfinite(buf).all()):
        raise NonFiniteError(f"{where}: the momentum buffer of {name!r} is not finite (NaN or inf); nothing was loaded")


def check_torch_state(opt, sd: dict, where: str = "this state_dict") -> None:
    """torch's part of a ``NaturalGradient.state_dict`` (param groups, per-parameter state) fits ``opt``."""
    groups = sd.get("param_groups")
    state = sd.get("state")
    if not isinstance(groups, list) or not isinstance(state, dict):
        raise FisherkitError(f"{where} has no torch optimizer part ('state', 'param_groups'); nothing was loaded")
    check_hyperparameters(groups, where)
    if len(groups) != len(opt.param_groups) or any(len(a.get("params", [])) != len(b["params"])
                                                   for a, b in zip(groups, opt.param_groups)):
        raise FisherkitError(f"{where} has param groups of other sizes than this optimizer's; nothing was loaded")
    ids = [i for g in groups for i in g["params"]]
    params = [p for g in opt.param_groups for p in g["params"]]
    by_id = dict(zip(ids, params))
    for i, st in state.items():
        if i not in by_id or not isinstance(st, dict):
            raise FisherkitError(f"{where} has state for an unknown parameter {i!r}; nothing was loaded")
        p = by_id[i]
        for k, v in st.items():
            if k == "momentum_buffer":
                check_momentum(opt._name.get(id(p), str(i)), v, p, where)


def load(opt, path) -> None:
    """Restore ``opt`` from a file written by ``save`` (bit-exact resumption); all or nothing."""
    tensors, fields = read_state(path, FORMAT, FORMAT_VERSION, "NaturalGradient checkpoint")
    if fields["format_version"] not in READABLE:
        raise FisherkitError(f"{path} has format version {fields['format_version']}; this fisherkit reads "
                             f"version {FORMAT_VERSION} (restart the optimizer from the saved model weights)")
    meta = fields.get("meta")
    need = ("names", "shapes", "structure", "kind", "layout", "steps", "updates", "damping", "skipped_steps",
            "param_groups")
    missing = [k for k in need if not isinstance(meta, dict) or k not in meta]
    if missing or "generator" not in tensors:
        raise FisherkitError(f"{path} is an incomplete NaturalGradient checkpoint (missing "
                             f"{', '.join(missing) or 'generator'}); nothing was loaded")
    shapes = [list(s) for s in opt.pre.info.shapes]
    if meta["names"] != list(opt.pre.info.names) or meta["shapes"] != shapes:
        raise FisherkitError(f"{path} was saved for parameters {meta['names'][:4]}... with shapes "
                             f"{meta['shapes'][:4]}...; this optimizer has {opt.pre.info.names[:4]}... {shapes[:4]}...")
    check_hyperparameters(meta["param_groups"], str(path))
    if len(meta["param_groups"]) != len(opt.param_groups):
        raise FisherkitError(f"{path} has {len(meta['param_groups'])} param groups; this optimizer has "
                             f"{len(opt.param_groups)}")
    skipped = meta["skipped_steps"]
    if isinstance(skipped, bool) or not isinstance(skipped, int) or skipped < 0:
        raise FisherkitError(f"{path} has skipped_steps={skipped!r}; nothing was loaded")
    momentum = {}
    for n, p in opt.params.items():
        key = f"momentum.{n}"
        if key in tensors:
            check_momentum(n, tensors[key], p, str(path))
            momentum[n] = tensors[key].to(device=p.device, dtype=p.dtype)
    pre = {"structure": meta["structure"], "kind": meta["kind"], "names": meta["names"], "shapes": meta["shapes"],
           "layout": meta["layout"], "steps": meta["steps"],
           "updates": meta["updates"], "damping": meta["damping"], "generator": tensors["generator"],
           "tensors": {k[4:]: v for k, v in tensors.items() if k.startswith("pre.")}}
    for k, v in tensors.items():  # second moments (format 3): finite, or nothing is loaded
        if k.startswith(("graft.", "eigen.")) and not (torch.is_floating_point(v) and bool(torch.isfinite(v).all())):
            raise NonFiniteError(f"{path}: the second moment {k!r} is not finite (NaN or inf); nothing was loaded")
    prepared = opt.pre._prepare_state(pre)
    # everything is checked: assign
    opt.pre._assign_state(prepared)
    for g, saved in zip(opt.param_groups, meta["param_groups"]):
        g.update(saved)
    for n, p in opt.params.items():
        if n in momentum:
            opt.state[p]["momentum_buffer"] = momentum[n]
        else:
            opt.state[p].pop("momentum_buffer", None)
    for n, p in opt.params.items():  # second moments of grafting / KFACEigenAdam (format 3; none in version 2)
        for key, prefix in (("graft_v", "graft"), ("eigen_v", "eigen")):
            v = tensors.get(f"{prefix}.{n}")
            if v is not None:
                opt.state[p][key] = v.to(device=p.device, dtype=p.dtype)
            else:
                opt.state[p].pop(key, None)
    opt.skipped_steps = int(skipped)
