"""Saving a ``NaturalGradient`` to disk: safetensors (no pickle), written atomically, versioned metadata.

Tensors: the curvature (``pre.<i>.<kind>.<name>``), the momentum buffers (``momentum.<param>``) and
the Monte-Carlo generator state (``generator``). Metadata (JSON): format name and version, the
fisherkit version, structure, kind, parameter names and shapes, counters, damping and the param
groups' hyper-parameters. ``load`` refuses a file written for other parameters or another structure.
"""

from __future__ import annotations

from ..curvature.io import read_state, write_state
from ..errors import FisherkitError

FORMAT = "fisherkit.optim.NaturalGradient"
FORMAT_VERSION = 2  # 2: the curvature as the one stack's Curvature tensors (``Preconditioner.state_dict``)


def save(opt, path) -> None:
    """Write ``opt``'s full state to ``path`` (safetensors)."""
    pre = opt.pre.state_dict()
    tensors = {f"pre.{k}": v for k, v in pre["tensors"].items()}
    tensors["generator"] = pre["generator"]
    for n, p in opt.pre.params.items():
        buf = opt.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            tensors[f"momentum.{n}"] = buf
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    meta = {"structure": pre["structure"], "kind": pre["kind"], "names": pre["names"], "layout": pre["layout"],
            "shapes": [list(s) for s in opt.pre.info.shapes], "steps": pre["steps"], "updates": pre["updates"],
            "damping": pre["damping"], "skipped_steps": opt.skipped_steps, "param_groups": groups}
    write_state(tensors, path, FORMAT, FORMAT_VERSION, meta=meta)


def load(opt, path) -> None:
    """Restore ``opt`` from a file written by ``save`` (bit-exact resumption)."""
    tensors, fields = read_state(path, FORMAT, FORMAT_VERSION, "NaturalGradient checkpoint")
    if fields["format_version"] != FORMAT_VERSION:
        raise FisherkitError(f"{path} has format version {fields['format_version']}; this fisherkit reads "
                             f"version {FORMAT_VERSION} (restart the optimizer from the saved model weights)")
    meta = fields["meta"]
    shapes = [list(s) for s in opt.pre.info.shapes]
    if meta["names"] != list(opt.pre.info.names) or meta["shapes"] != shapes:
        raise FisherkitError(f"{path} was saved for parameters {meta['names'][:4]}... with shapes "
                             f"{meta['shapes'][:4]}...; this optimizer has {opt.pre.info.names[:4]}... {shapes[:4]}...")
    if len(meta["param_groups"]) != len(opt.param_groups):
        raise FisherkitError(f"{path} has {len(meta['param_groups'])} param groups; this optimizer has "
                             f"{len(opt.param_groups)}")
    pre = {"structure": meta["structure"], "kind": meta["kind"], "names": meta["names"], "shapes": meta["shapes"],
           "layout": meta["layout"], "steps": meta["steps"],
           "updates": meta["updates"], "damping": meta["damping"], "generator": tensors["generator"],
           "tensors": {k[4:]: v for k, v in tensors.items() if k.startswith("pre.")}}
    opt.pre.check_state(pre)
    opt.pre.load_state_dict(pre)
    for g, saved in zip(opt.param_groups, meta["param_groups"]):
        g.update(saved)
    for n, p in opt.pre.params.items():
        key = f"momentum.{n}"
        if key in tensors:
            opt.state[p]["momentum_buffer"] = tensors[key].to(device=p.device, dtype=p.dtype)
        else:
            opt.state[p].pop("momentum_buffer", None)
    opt.skipped_steps = int(meta["skipped_steps"])
