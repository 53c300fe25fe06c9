"""Turning what users pass as ``data`` into batches on the model's device.

``data`` is a DataLoader or any iterable of batches, an ``(inputs, labels)`` pair of whole-dataset
tensors (split into ``batch_size`` rows), or a mapping of whole-dataset tensors (HF style, labels
under ``"labels"``). A batch is ``(inputs, labels)``, ``(inputs,)``, a tensor of inputs, or a
mapping whose ``"labels"`` entry holds the labels and whose other entries are the model's keyword
inputs. Inputs may be a tensor, a tuple of tensors or a mapping (see ``engine.adapters``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

from ..errors import FisherkitError, ShapeError
from .adapters import LABEL_KEYS, batch_len, is_inputs, map_inputs, slice_inputs


def _split_mapping(batch: Mapping):
    inputs = {k: v for k, v in batch.items() if k not in LABEL_KEYS}
    y = next((batch[k] for k in LABEL_KEYS if k in batch), None)
    return inputs, y


def _split_batch(batch, index: int):
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, Mapping):
        x, y = _split_mapping(batch)
        if not x or not is_inputs(x):
            raise FisherkitError(f"batch {index} is a mapping without tensor inputs (keys {list(batch.keys())})")
        if y is not None and not isinstance(y, torch.Tensor):
            raise FisherkitError(f"batch {index}: its labels are a {type(y).__name__}, not a tensor")
        return x, y
    if isinstance(batch, (tuple, list)) and len(batch) >= 1:
        x = batch[0]
        y = batch[1] if len(batch) > 1 else None
        if not is_inputs(x) or (y is not None and not isinstance(y, torch.Tensor)):
            raise FisherkitError(f"batch {index} does not hold tensors (got {type(x).__name__}, {type(y).__name__})")
        return x, y
    raise FisherkitError(f"batch {index} is a {type(batch).__name__}; expected an (inputs, labels) pair of tensors")


def _whole(data):
    """(X, y) when ``data`` is one whole dataset rather than an iterable of batches, else None."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and is_inputs(data[0]) and \
            (isinstance(data[1], torch.Tensor) or data[1] is None) and not isinstance(data[0], (tuple, list)):
        return data[0], data[1]
    if isinstance(data, Mapping) and is_inputs(data):
        return _split_mapping(data)
    return None


def iterate_batches(
    data,
    batch_size: int | None = None,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Iterator[tuple[int, object, torch.Tensor | None]]:
    """Yield ``(batch_index, X, y)`` from a DataLoader, an ``(X, y)`` pair or an iterable of pairs.

    Floating inputs are cast to the model's ``dtype``; integer inputs (token ids, attention masks)
    are left as they are. Raises ``FisherkitError`` when no data arrives at all.
    """
    whole = _whole(data)
    if whole is not None:
        X_all, y_all = whole  # labels may be None (enough for kind="exact" or "mc")
        n = batch_len(X_all)
        if y_all is not None and y_all.shape[0] != n:
            raise ShapeError(f"inputs have {n} rows but labels have {y_all.shape[0]}")
        bs = batch_size or 128
        batches = [(slice_inputs(X_all, slice(s, s + bs)), None if y_all is None else y_all[s : s + bs])
                   for s in range(0, n, bs)]
    elif isinstance(data, torch.Tensor):
        raise FisherkitError("data is a single tensor; pass (inputs, labels) or a DataLoader")
    else:
        try:
            batches = iter(data)
        except TypeError:
            raise FisherkitError(f"data of type {type(data).__name__} is not iterable; pass (X, y) or a DataLoader") from None
    seen = 0
    for i, batch in enumerate(batches):
        x, y = _split_batch(batch, i)
        n = batch_len(x)
        if n == 0:
            continue
        if y is not None and y.shape[0] != n:
            raise ShapeError(f"batch {i}: inputs have {n} rows but labels have {y.shape[0]}")

        def move(t):
            t = t.to(device) if device is not None else t
            return t.to(dtype) if dtype is not None and t.dtype.is_floating_point else t

        x = map_inputs(x, move)
        if y is not None:
            y = move(y)
        seen += 1
        yield i, x, y
    if seen == 0:
        raise FisherkitError("data is empty: no batch with at least one sample was found")


LOW_PRECISION = (torch.float16, torch.bfloat16)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics of 16-bit models are summed in float32 (DESIGN: bf16/fp16 accumulate in float32)."""
    return torch.float32 if dtype in LOW_PRECISION else dtype


def wide(t: torch.Tensor) -> torch.Tensor:
    """t in float32 if it is 16-bit, else t itself."""
    return t.float() if t.dtype in LOW_PRECISION else t


def model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device and floating dtype of a model's first floating parameter (CPU/float32 if none)."""
    for p in model.parameters():
        if p.dtype.is_floating_point:
            return p.device, p.dtype
    return torch.device("cpu"), torch.get_default_dtype()

