"""The engine's second source of per-layer statistics: the user's own forward / backward (no second
pass over the data), for the optimizer. The first source is ``collect.gather``'s own loop.

During a forward with gradients enabled, forward hooks record each Linear/Conv layer's input ã and
output z, and a hook on the model itself records the input x and output f. Then per ``kind``:

* ``"mc"`` / ``"exact"``: output directions V (residuals at labels sampled from p(y|f), or the
  columns of the output-Fisher square root) are pulled back to the layer outputs by one extra
  backward from f, run right at the end of the forward with ``retain_graph=True`` so the user's
  ``loss.backward()`` still works: g[d] = ∂(f · V[d]) / ∂z.
* ``"empirical"``: tensor hooks on z and f keep the gradients the loss backward sends through them;
  for a mean-reduced loss these are rₙ/B, so they are multiplied by B (``loss_reduction="mean"``).

The result is a ``Batch``: per hook unit (ã ``[B, T, I]``, g ``[D, B, T, O]``), the directions
V ``[D, B, *out]`` and the input x (for the torch.func fallback and Fisher-vector products);
``Batch.stats(func)`` is the same ``BatchStats`` record ``gather`` yields, so every structure's
accumulator takes it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import FisherkitError, NonFiniteError, ShapeError
from .collect import BatchStats, output_grads
from .directions import directions
from .units import observe, unit_activations, unit_output_grads


@dataclass
class Batch:
    x: torch.Tensor
    f: torch.Tensor
    n: int
    V: torch.Tensor | None = None
    hook: list = field(default_factory=list)  # (unit, a, g)
    inputs: dict = field(default_factory=dict)  # unit index -> list of inputs
    outputs: dict = field(default_factory=dict)  # unit index -> list of outputs
    grads: dict = field(default_factory=dict)  # unit index -> output grads (empirical)
    f_grad: torch.Tensor | None = None

    def stats(self, func: dict | None = None) -> BatchStats:
        """This batch as the record the curvature accumulators take (``func``: torch.func per-sample grads)."""
        return BatchStats(0, self.n, hook=list(self.hook), func=dict(func or {}))


def check_output(lik, f: torch.Tensor) -> None:
    """Refuse model outputs the likelihood cannot describe (wrong rank, one class, non-finite)."""
    if not isinstance(f, torch.Tensor):
        raise FisherkitError(f"the model returned a {type(f).__name__}; NaturalGradient needs a tensor of outputs")
    if not f.dtype.is_floating_point:
        raise ShapeError(f"the model output has dtype {f.dtype}; the {lik.name} likelihood needs floating outputs")
    lik.check(f.detach())  # includes the categorical likelihood's "at least 2 logits"


class Recorder:
    """Installs the hooks; ``batch`` holds what the latest forward with gradients recorded."""

    def __init__(self, model, units, lik, kind, mc_samples, generator, loss_reduction, need_layers, wanted,
                 adapter=None):
        from .adapters import DEFAULT

        self.adapter = adapter or DEFAULT  # where the logits are; labels passed as model(..., labels=) mask −100
        self.model, self.units, self.lik, self.kind = model, units, lik, kind
        self.mc_samples, self.generator, self.loss_reduction = mc_samples, generator, loss_reduction
        self.need_layers = need_layers  # whether per-layer statistics are needed (not for implicit)
        self.wanted = wanted  # callable: should the next forward be recorded?
        self.batch: Batch | None = None
        self.last_x: torch.Tensor | None = None
        self.busy = False  # True while fisherkit itself runs the model (no recording then)
        self._open: Batch | None = None
        self._handles = [model.register_forward_pre_hook(self._pre_root, with_kwargs=True)]
        self.unmatched: list = []  # attention modules whose recomputation differed from their output
        self._handles += observe(units, self._layer, check=self.unmatched, check_once=True)
        self._handles.append(model.register_forward_hook(self._root, with_kwargs=True))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _active(self) -> bool:
        return torch.is_grad_enabled() and not self.busy and self.wanted()

    def _pre_root(self, module, args, kwargs):
        from .adapters import LABEL_KEYS, batch_len, is_inputs, map_inputs

        self._open = None
        kw = {k: v for k, v in kwargs.items() if k not in LABEL_KEYS and isinstance(v, torch.Tensor)}
        if args and not kw:
            x = args[0] if len(args) == 1 else tuple(args)
        elif kw and not args:
            x = kw
        else:
            return  # positional and keyword tensors mixed: not a form fisherkit can replay
        if not is_inputs(x):
            return
        x = map_inputs(x, lambda t: t.detach())
        if torch.is_grad_enabled() and not self.busy:
            self.last_x = x
        if self._active():
            self._open = Batch(x, None, batch_len(x))
            self._labels = next((kwargs[k] for k in LABEL_KEYS if isinstance(kwargs.get(k), torch.Tensor)), None)

    def _layer(self, i, x, output):
        """``units[i]`` saw input x and gave output z (``units.observe``)."""
        b = self._open
        if b is None or not self.need_layers:
            return
        b.inputs.setdefault(i, []).append(x.detach())
        b.outputs.setdefault(i, []).append(output)
        if self.kind == "empirical" and output.requires_grad:
            def keep(grad, i=i, b=b):
                b.grads[i] = grad.detach()
            output.register_hook(keep)

    def _root(self, module, args, kwargs, output):
        b, self._open = self._open, None
        if b is None:
            return
        full = self.adapter.raw_logits(output)
        logits = self.adapter.logits(output)
        check_output(self.lik, logits)
        b.f = logits.detach()
        mask = self.adapter.prepare_labels(getattr(self, "_labels", None), self.lik.name)[1]
        if self.kind == "empirical":
            if full.requires_grad:  # the loss's own gradient reaches the un-shifted logits
                def keep(grad, b=b):
                    b.f_grad = grad.detach()[:, :-1] if self.adapter.shift_labels else grad.detach()
                full.register_hook(keep)
        else:
            # the same output directions as fk.fisher's own loop (exact: Λ's square root; mc: sampled residuals)
            b.V = directions(self.lik, b.f, None, self.kind, self.mc_samples, self.generator, mask=mask)
            if self.need_layers:
                self._pull_back(b, logits)
        self.batch = b

    def _pull_back(self, b: Batch, output: torch.Tensor) -> None:
        idx = [i for i in range(len(self.units)) if len(b.outputs.get(i, [])) == 1]
        zs = [b.outputs[i][0] for i in idx]
        zs_ok = [z for z in zs if z.requires_grad]
        if not zs_ok or not output.requires_grad:
            return
        gs = output_grads(output, zs_ok, b.V.to(output.dtype), retain=True)
        it = iter(gs)
        for i, z in zip(idx, zs):
            b.grads[i] = next(it) if z.requires_grad else None

    def finish(self) -> Batch:
        """Turn the recorded tensors into (unit, ã, g) triples; free the graph references."""
        b = self.batch
        if b is None:
            raise FisherkitError(
                "no forward pass of the model with gradients enabled was seen since the last curvature update; "
                "call model(x) (not under torch.no_grad) and loss.backward() before step()"
            )
        if self.kind == "empirical":
            if b.f_grad is None:
                raise FisherkitError("the loss backward did not reach the model output; call loss.backward() before step()")
            scale = b.n if self.loss_reduction == "mean" else 1.0
            b.V = (b.f_grad * scale).unsqueeze(0)
        for i, u in enumerate(self.units if b.n > 0 else ()):  # an empty batch (a DDP rank's uneven share): no layer terms
            if len(b.inputs.get(i, [])) != 1 or i not in b.grads:
                continue
            gz = b.grads[i]
            a = unit_activations(u, b.inputs[i][0])
            if gz is None:
                gz = a.new_zeros((b.V.shape[0],) + tuple(b.outputs[i][0].shape))
            elif self.kind == "empirical":
                gz = (gz * (b.n if self.loss_reduction == "mean" else 1.0)).unsqueeze(0)
            g = unit_output_grads(u, gz)
            if not torch.isfinite(g).all():
                raise NonFiniteError(f"non-finite output gradient at layer {u.module_name!r} while gathering curvature")
            b.hook.append((u, a, g))
        b.outputs, b.grads, b.inputs = {}, {}, {}
        self.batch = None
        return b

    def misfired(self) -> list[int]:
        """Indices of units whose forward hook did not fire exactly once in the last recorded forward, or
        whose attention module's recomputation did not reproduce its output (``engine.attention``)."""
        b = self.batch
        if b is None:
            return []
        bad = {id(m) for m in self.unmatched}
        return [i for i, u in enumerate(self.units)
                if len(b.inputs.get(i, [])) != 1 or id(getattr(u, "via", None)) in bad]
