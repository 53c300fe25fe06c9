"""Turning what users pass as ``data`` into batches of tensors on the model's device."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..errors import FisherkitError, ShapeError


def _split_batch(batch, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, dict):
        raise FisherkitError(f"batch {index} is a dict; fisherkit expects (inputs, labels) pairs")
    if isinstance(batch, (tuple, list)) and len(batch) >= 1:
        x = batch[0]
        y = batch[1] if len(batch) > 1 else None
        if not isinstance(x, torch.Tensor) or (y is not None and not isinstance(y, torch.Tensor)):
            raise FisherkitError(f"batch {index} does not hold tensors (got {type(x).__name__}, {type(y).__name__})")
        return x, y
    raise FisherkitError(f"batch {index} is a {type(batch).__name__}; expected an (inputs, labels) pair of tensors")


def iterate_batches(
    data,
    batch_size: int | None = None,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor | None]]:
    """Yield ``(batch_index, X, y)`` from a DataLoader, an ``(X, y)`` pair or an iterable of pairs.

    Floating inputs are cast to the model's ``dtype``; integer inputs (token ids) are left as they
    are. Raises ``FisherkitError`` when no data arrives at all.
    """
    if (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and isinstance(data[0], torch.Tensor)
        and (isinstance(data[1], torch.Tensor) or data[1] is None)
    ):
        X_all, y_all = data  # labels may be None (enough for kind="exact" or "mc")
        if y_all is None:
            bs = batch_size or 128
            batches = [(X_all[s : s + bs], None) for s in range(0, X_all.shape[0], bs)]
        elif X_all.shape[0] != y_all.shape[0]:
            raise ShapeError(f"inputs have {X_all.shape[0]} rows but labels have {y_all.shape[0]}")
        else:
            bs = batch_size or 128
            batches = [(X_all[s : s + bs], y_all[s : s + bs]) for s in range(0, X_all.shape[0], bs)]
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
        if x.shape[0] == 0:
            continue
        if y is not None and y.shape[0] != x.shape[0]:
            raise ShapeError(f"batch {i}: inputs have {x.shape[0]} rows but labels have {y.shape[0]}")
        if device is not None:
            x = x.to(device)
            y = y.to(device) if y is not None else None
        if dtype is not None and x.dtype.is_floating_point:
            x = x.to(dtype)
        if y is not None and dtype is not None and y.dtype.is_floating_point:
            y = y.to(dtype)
        seen += 1
        yield i, x, y
    if seen == 0:
        raise FisherkitError("data is empty: no batch with at least one sample was found")


def model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device and floating dtype of a model's first parameter (CPU/float32 if it has none)."""
    for p in model.parameters():
        return p.device, p.dtype
    return torch.device("cpu"), torch.get_default_dtype()
