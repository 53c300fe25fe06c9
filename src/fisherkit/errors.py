"""Errors fisherkit raises for user mistakes.

``FisherkitError`` subclasses ``ValueError`` so existing ``except ValueError`` code keeps working;
the command line turns it into a one-line message and exit code 2.
"""


class FisherkitError(ValueError):
    """A user mistake: bad data, a bad argument, a file from another model."""


class ShapeError(FisherkitError):
    """A tensor has a shape that does not fit (model output vs likelihood, vector vs parameters)."""


class NonFiniteError(FisherkitError):
    """A NaN or infinity appeared in data, outputs or gradients."""


class SupportError(FisherkitError):
    """Data lies outside the support of a distribution (negative counts, labels out of range)."""


def model_call_error(model, inputs, exc: BaseException, where: str) -> FisherkitError:
    """The named error for a model call that raised inside torch (``where``: e.g. ``"batch 3"``).

    Says what the model expects when it can tell — the dtype and number of input features of its
    first ``Linear`` / ``Conv`` / ``Embedding`` layer — and what the batch holds: integer inputs to
    a float layer and a wrong feature count become a ``ShapeError``; anything else a
    ``FisherkitError`` carrying torch's message. Use as ``raise model_call_error(...) from exc``.
    """
    import torch
    from torch import nn

    ts = [inputs] if isinstance(inputs, torch.Tensor) else [
        t for t in (inputs.values() if isinstance(inputs, dict) else inputs if isinstance(inputs, (tuple, list)) else [])
        if isinstance(t, torch.Tensor)]
    got = ", ".join(f"{t.dtype} of shape {list(t.shape)}" for t in ts[:3]) or type(inputs).__name__
    first = next((m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d,
                                                                nn.Embedding, nn.EmbeddingBag))), None)
    torch_says = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    if first is not None and len(ts) == 1:
        x = ts[0]
        if isinstance(first, (nn.Embedding, nn.EmbeddingBag)):
            if x.is_floating_point():
                return ShapeError(f"{where}: the model's first layer is an {type(first).__name__} that takes integer "
                                  f"indices in [0, {first.num_embeddings}); the inputs are {got}. Pass x.long()")
        else:
            dtype = first.weight.dtype
            feats = first.in_features if isinstance(first, nn.Linear) else first.in_channels
            axis = "last dimension" if isinstance(first, nn.Linear) else "dimension 1 (channels)"
            have = (x.shape[-1] if isinstance(first, nn.Linear) else x.shape[1]) if x.dim() >= 2 else None
            problems = []
            if x.dtype != dtype:
                problems.append(f"its inputs must be {dtype}" + (" (integer data: convert with x.float(), or "
                                f"x.to({dtype}))" if not x.is_floating_point() else f" (convert with x.to({dtype}))"))
            if have is not None and have != feats:
                problems.append(f"it expects {feats} features in the {axis}, the batch has {have}")
            if problems:
                return ShapeError(f"{where}: the inputs ({got}) do not fit the model: its first layer is "
                                  f"{type(first).__name__}({feats}, ...) in {dtype}; " + "; ".join(problems)
                                  + f" [torch: {torch_says}]")
    return FisherkitError(f"{where}: calling the model on the inputs ({got}) failed: {type(exc).__name__}: "
                          f"{torch_says}. Check that the data fits the model (dtype, number of features, "
                          "and for tuple/dict inputs the argument names)")
