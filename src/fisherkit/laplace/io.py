"""Saving and loading a fitted Laplace: safetensors (no pickle) + JSON metadata, written atomically.

Reuses the house helpers of ``fisherkit.curvature.io``: ``write_state`` / ``read_state`` (atomic
temp-file + rename; the format and version checks; readable errors for a truncated file or corrupt
metadata, raised here as ``LaplaceError``) and the names/shapes check against the model.
"""

from __future__ import annotations

import torch

from ..curvature.io import check_against_model, read_state, write_state
from ..errors import FisherkitError
from .errors import LaplaceError
from .posterior import piece_from_state

FORMAT = "fisherkit.laplace"
FORMAT_VERSION = 1


def save(la, path) -> None:
    la._need_fit()
    tensors = {"mean": la.mean, "prior_precision": la.prior_precision.reshape(-1) if la.prior_precision.dim() else la.prior_precision.reshape(1),
               "prior_mean": la.prior_mean}
    pieces = []
    for i, pc in enumerate(la._pieces):
        ts, extra = pc.state()
        for k, v in ts.items():
            tensors[f"p{i}.{k}"] = v
        tensors[f"p{i}.idx"] = pc.idx
        pieces.append({"kind": pc.kind, "extra": extra, "names": pc.names})
    meta = {"names": la.names, "shapes": [list(s) for s in la.shapes], "likelihood": la.likelihood,
            "subset": la.subset, "structure": la.structure, "kind": la.kind, "sigma": la.sigma,
            "n_data": la.n_data, "n_outputs": la.n_outputs, "loss": float(la.loss),
            "prior_scalar": la.prior_precision.dim() == 0, "pieces": pieces}
    write_state(tensors, path, FORMAT, FORMAT_VERSION, meta=meta)


def load(path, model):
    """A fitted ``Laplace`` for ``model`` from ``path``; refuses a file for other parameter names/shapes."""
    from .laplace import Laplace

    if not isinstance(model, torch.nn.Module):
        raise LaplaceError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    try:
        tensors, fields = read_state(path, FORMAT, FORMAT_VERSION, "fisherkit Laplace")
    except LaplaceError:
        raise
    except FisherkitError as e:
        raise LaplaceError(str(e)) from None
    if not isinstance(fields.get("meta"), dict):
        raise LaplaceError(f"{path} has no Laplace metadata (a corrupt or hand-edited file?)")
    meta = fields["meta"]
    check_against_model(meta["names"], [tuple(s) for s in meta["shapes"]], model, f"the Laplace posterior in {path}")
    p0 = next(model.parameters())
    tensors = {k: (v.to(p0.device) if k.endswith(".idx") else v.to(device=p0.device, dtype=p0.dtype)) for k, v in tensors.items()}
    la = Laplace(model, likelihood=meta["likelihood"], subset=meta["names"], structure=meta["structure"],
                 kind=meta["kind"], sigma=meta["sigma"], prior_precision=tensors["prior_precision"],
                 prior_mean=tensors["prior_mean"])
    la.subset = meta["subset"]
    if meta["prior_scalar"]:
        la.prior_precision = tensors["prior_precision"][0]
    pieces = []
    for i, d in enumerate(meta["pieces"]):
        pre = f"p{i}."
        ts = {k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre) and k != pre + "idx"}
        pc = piece_from_state(d["kind"], tensors[pre + "idx"], ts, d["extra"])
        pc.names = list(d["names"])
        pieces.append(pc)
    la._pieces = pieces
    la.mean = tensors["mean"]
    la.n_data, la.n_outputs = int(meta["n_data"]), int(meta["n_outputs"])
    la.loss = torch.tensor(meta["loss"], dtype=p0.dtype, device=p0.device)
    return la
