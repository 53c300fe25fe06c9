"""The batch loop: forward once, backward along every output direction, hand out per-layer statistics.

For each batch it yields a ``BatchStats``: per hook unit the layer inputs ã ``[B, T, I]`` and the
output gradients g ``[D, B, T, O]`` (all D directions from one batched backward), and per torch.func
parameter the per-sample gradients ``[D, B, *shape]``. ``engine.accumulate`` turns these into sums.
"""

from __future__ import annotations

import contextlib
import math

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import FisherkitError, NonFiniteError, model_call_error
from ..likelihoods import Likelihood
from .adapters import DEFAULT, Adapter, sample_count
from .data import iterate_batches, model_device_dtype, wide
from .directions import directions
from .functional import persample_grads
from .units import HookUnit, Plan, capture_forward, settle, unit_activations, unit_output_grads


class LayerTriples(Sequence):
    """The ``(unit, ã, g)`` triples of one batch (chunk), with ã built when a triple is read.

    ã is the layer input with a column of ones for the bias (a convolution's: its unfolded patches) — a
    copy as large as the input. Built on reading, a consumer that goes through the layers one after
    another holds one layer's copy at a time instead of every layer's at once (on M5, 4 decoder layers
    × 8 sequences of 128 tokens: 38 MiB less at the peak). Reading a triple twice builds ã twice.
    """

    def __init__(self):
        self._raw: list = []  # (unit, layer input x, g)

    def add(self, unit: HookUnit, x: torch.Tensor, g: torch.Tensor) -> None:
        self._raw.append((unit, x, g))

    def __len__(self) -> int:
        return len(self._raw)

    @property
    def units(self) -> list:
        """The units, without building any ã."""
        return [r[0] for r in self._raw]

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[j] for j in range(*k.indices(len(self)))]
        u, x, g = self._raw[k]
        return u, wide(unit_activations(u, x)), g


@dataclass
class BatchStats:
    index: int
    n: int
    hook: Sequence = field(default_factory=list)  # (unit, ã, g) triples: a list or ``LayerTriples``
    func: dict[str, torch.Tensor] = field(default_factory=dict)
    first: bool = True  # False for the later direction chunks of a batch (n = 0 there; layer inputs repeat)


def check_batchnorm(model: nn.Module, allow_batchnorm_train: bool) -> None:
    """Refuse modules whose training mode makes a Fisher ill-defined or irreproducible."""
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and not allow_batchnorm_train:
            raise FisherkitError(
                f"BatchNorm layer {name!r} is in training mode, where per-sample gradients are ill-defined "
                "(each sample's output depends on the whole batch). Call model.eval() first, or pass "
                "allow_batchnorm_train=True for the batch-level approximation."
            )
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0:
            raise FisherkitError(
                f"Dropout layer {name!r} is in training mode: every forward draws a new mask, so kind='mc' differs "
                "under the same seed and the implicit operator is not symmetric (conjugate gradients and Lanczos "
                "break). Call model.eval() first: the Fisher of the deterministic network."
            )


@contextlib.contextmanager
def buffers_kept(model: nn.Module):
    """Inside, the model's buffers may change (BatchNorm running statistics in training mode); they are
    restored on exit, so computing a Fisher never changes the model."""
    saved = {n: b.detach().clone() for n, b in model.named_buffers()}
    try:
        yield
    finally:
        with torch.no_grad():
            for n, b in model.named_buffers():
                if n in saved:
                    b.copy_(saved[n])


class _BatchNormEval:
    """Inside: BatchNorm layers in training mode use running statistics (per-sample path only)."""

    def __init__(self, model):
        self.mods = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]

    def __enter__(self):
        for m in self.mods:
            m.eval()

    def __exit__(self, *exc):
        for m in self.mods:
            m.train()


def _all_finite(t: torch.Tensor) -> bool:
    """All entries finite. A finite sum settles it with one reduction (no boolean tensor); only when the
    sum is inf/nan (a non-finite entry, or an overflow of huge finite ones) is every entry checked."""
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def output_grads(out, zs, v, retain=False):
    """Gradients of ``out`` along every direction ``v[d]`` at the tensors ``zs``: a list of ``[D, *z.shape]``
    (None where ``out`` does not depend on z). One batched backward (``is_grads_batched``), or one
    backward per direction for ops without a batching rule."""
    if v.shape[0] == 1:
        gs = torch.autograd.grad(out, zs, grad_outputs=v[0], allow_unused=True, retain_graph=retain)
        return [None if g is None else g.unsqueeze(0) for g in gs]
    try:
        return list(torch.autograd.grad(out, zs, grad_outputs=v, is_grads_batched=True, allow_unused=True,
                                        retain_graph=retain))
    except RuntimeError:  # an op without a batching rule: one backward per direction
        cols = [torch.autograd.grad(out, zs, grad_outputs=vd, allow_unused=True, retain_graph=True) for vd in v]
        return [None if cols[0][i] is None else torch.stack([c[i] for c in cols]) for i in range(len(zs))]


def _progress(iterable, total, enabled, description):
    if not enabled:
        yield from iterable
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(description, total=total)
        for item in iterable:
            yield item
            bar.advance(task)


def batch_source(model: nn.Module, data, batch_size: int | None = None, wrap=None):
    """``(batches, first)``: an iterator of ``(index, X, y)`` over ``data`` on the model's device and
    dtype, and its first batch (already read, still yielded), or None when ``wrap`` (a distributed
    shard filter) let no batch through. Peeking keeps one-shot iterables (generators) usable."""
    device, dtype = model_device_dtype(model)
    it = iterate_batches(data, batch_size, device, dtype)
    it = iter(wrap(it) if wrap is not None else it)
    first = next(it, None)
    if first is None:
        return iter(()), None

    def chained():
        yield first
        yield from it

    return chained(), first


def settled_plan(model: nn.Module, plan: Plan, first) -> Plan:
    """``units.settle`` on the first batch from ``batch_source`` (the plan as it is without one)."""
    if first is None:
        return plan
    try:
        return settle(model, plan, first[1])
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as e:  # the probe forward is the first call of the model on the data
        raise model_call_error(model, first[1], e, f"batch {first[0]}") from e


def gather(
    model: nn.Module,
    batches,
    lik: Likelihood,
    kind: str,
    plan: Plan,
    mc_samples: int = 1,
    generator: torch.Generator | None = None,
    max_memory: float = 2**30,
    progress: bool = False,
    description: str = "Fisher",
    need_func: bool = True,
    total: int | None = None,
    adapter: Adapter = DEFAULT,
    per_token: bool = False,
):
    """Yield one ``BatchStats`` per batch of ``batches`` (from ``batch_source``), for a settled ``plan``.

    ``BatchStats.n`` counts the batch's samples (rows), or with ``per_token`` its counted output
    positions (tokens not labelled ``ignore_index``).
    """
    for i, x, y in _progress(batches, total, progress, description):
        try:
            out, inputs, zs = capture_forward(model, x, plan, adapter,
                                              one_direction=kind == "empirical" or (kind == "mc" and mc_samples == 1))
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as e:  # torch's own message, made to say which batch and what the model expects
            raise model_call_error(model, x, e, f"batch {i}") from e
        units, elems, nh = plan.hook_units, plan.elem_units, len(plan.hook_units)
        if elems and not need_func:  # e.g. EKFAC's refit pass: only the Kronecker layers are needed
            elems, inputs, zs = [], inputs[:nh], zs[:nh]
        y_ok, mask = adapter.prepare_labels(y, lik.name)  # ignored positions: a valid label, zeroed below
        lik.check(out, y_ok if kind == "empirical" or mask is not None else None, i)
        v = directions(lik, out, y_ok, kind, mc_samples, generator, i, mask=mask, lazy=True)
        count = sample_count(x, out, mask, per_token)
        z_shapes = [(tuple(z.shape), z.dtype) for z in zs]
        # Bounded memory: the output gradients of all D directions take D·Σ|z|·itemsize bytes (about 3× that
        # with temporaries); above max_memory the directions go through the backward in chunks.
        d_total = v.shape[0]
        per_direction = (3 * sum(z.numel() for z in zs) + math.prod(v.shape[1:])) * v.element_size()
        chunk = max(1, min(d_total, int(max_memory // max(1, per_direction))))
        for c0 in range(0, d_total, chunk):
            vc = v[c0 : c0 + chunk]
            stats = BatchStats(i, count if c0 == 0 else 0, hook=LayerTriples(), first=c0 == 0)
            if zs:
                last = c0 + chunk >= d_total
                gzs = output_grads(out, zs, vc, retain=not last)
                if last:  # the layer outputs are not needed after the last backward (the graph is gone)
                    zs = [None] * len(zs)
                for u, xin, zshape, gz in zip(units, inputs[:nh], z_shapes[:nh], gzs[:nh]):
                    if gz is None:
                        gz = xin.new_zeros((vc.shape[0],) + zshape[0], dtype=zshape[1])
                    g = wide(unit_output_grads(u, gz))
                    if not _all_finite(g):
                        raise NonFiniteError(f"non-finite gradient for parameter {u.weight!r} in batch {i}")
                    stats.hook.add(u, xin, g)
                for u, xin, zshape, gz in zip(elems, inputs[nh:], z_shapes[nh:], gzs[nh:]):
                    if gz is None:
                        gz = xin.new_zeros((vc.shape[0],) + zshape[0], dtype=zshape[1])
                    for n, g in u.handler.persample(u.module, xin, gz, u.names).items():
                        if not _all_finite(g):
                            raise NonFiniteError(f"non-finite gradient for parameter {n!r} in batch {i}")
                        # a tied weight's uses (embedding and LM head) are summed before any squaring
                        stats.func[n] = stats.func[n] + wide(g) if n in stats.func else wide(g)
            if plan.func_names and need_func:
                with _BatchNormEval(model):
                    grads = persample_grads(model, plan.func_names, x, vc, max_memory, adapter)
                for n, g in grads.items():
                    if not _all_finite(g):
                        raise NonFiniteError(f"non-finite gradient for parameter {n!r} in batch {i}")
                stats.func.update({n: wide(g) for n, g in grads.items()})
            yield stats
            stats = gzs = grads = g = gz = None  # the next chunk's backward must not sit beside this one's
        # free this batch's tensors before the next forward: the loop's names would keep them alive through
        # it (measured on M5: the peak went from one batch's statistics to two)
        out = inputs = zs = v = xin = u = None
