"""Bare parameters added to an activation — learned positions ``self.pos = nn.Parameter(...)`` used as
``h = emb(x) + self.pos[:T]``, ViT's ``x + self.pos_embed`` — or joined to it as ViT's class token, with
per-sample gradients in closed form.

No module of their own runs a forward hook, so without this they take the torch.func per-sample pass
over the whole model (on the benchmark transformer M4, most of its cost). During the engine's forward a
``TorchFunctionMode`` (``install``) watches the parameter θ: its one use must be an addition z = a + t
(or t + a) in which t is θ or a view of it (a slice, an ``unsqueeze``, a reshape that is a view), a has
the samples first and z has a's shape. Then ∂z/∂t is the identity broadcast over the samples and over
whatever else t was broadcast across, and the per-sample gradient along a backward direction d is

    ∂ℓ_{n,d}/∂θ = V_tᵀ ( Σ_{dims t was broadcast over} ∂ℓ_d/∂z[n] )

where V_tᵀ is the adjoint of the view (zeros outside a slice): a strided copy into a zero tensor.
The other use handled: ViT's class token, ``torch.cat([cls.expand(B, -1, -1), x], dim=1)`` — θ expanded
along the samples (stride 0) and joined along another dimension; its per-sample gradient is sample n's
slice of ∂ℓ/∂z at the token's place, put back through the view the same way.
Views of views are followed; any other use of θ or of a view of it in the forward (a product, a
second addition, an in-place op) is reported as a misfire, and ``units.settle`` sends θ back to
torch.func — so is an addition whose result is not per sample (checked there by a gradient probe).
"""

from __future__ import annotations

import weakref

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from .data import wide
from .elementwise import Handler

ADDS = {torch.add, torch.Tensor.add, torch.Tensor.__add__, torch.Tensor.__radd__}


class BareAddHandler(Handler):
    """The per-sample gradient of one bare parameter from its addition's output gradient (see the module)."""

    params = ("param",)

    def __init__(self, param: nn.Parameter):
        self.param = param
        self.where: tuple = ("add",)  # or ("cat", dim, offset): set by the tap at each forward (the same each time)

    def accepts(self, module):  # never chosen by module type: ``units.make_plan`` makes one per bare parameter
        return False

    def forward(self, module, x):  # nothing to re-run: the addition is the model's own
        raise NotImplementedError

    def fits(self, t: torch.Tensor, z: torch.Tensor, rows: int) -> bool:
        """Whether t (θ or its view) in z (samples first, ``rows`` of them) can be handled. An addition:
        right-aligned shapes, not broadcast along the samples' own dimension, the view without overlaps. A
        concatenation: t expanded along the samples (stride 0), joined along another dimension, each
        sample's slice a view of θ without overlaps. θ contiguous in both."""
        if z.dim() < 1 or t.dim() > z.dim() or not self.param.is_contiguous() or z.shape[0] != rows:
            return False
        if self.where[0] == "cat":
            inner = list(zip(t.stride()[1:], t.shape[1:]))
            return (t.dim() == z.dim() and t.shape[0] == rows and (t.stride(0) == 0 or rows == 1)
                    and all(st != 0 or n == 1 for st, n in inner))
        lead = z.dim() - t.dim()
        if lead == 0 and t.shape[0] != 1:
            return False
        if any(s not in (1, zs) for s, zs in zip(t.shape, z.shape[lead:])):
            return False
        return all(st != 0 or n == 1 for st, n in zip(t.stride(), t.shape))

    def persample(self, module, t, gz, names):
        p = self.param
        gz = wide(gz)  # the sums over broadcast positions in float32
        d, b = gz.shape[:2]
        if self.where[0] == "cat":  # each sample's own slice of the joined output; t[n] is the same view of θ
            _, dim, off = self.where
            g = gz.narrow(dim + 1, off, t.shape[dim])  # [D, B, *t.shape[1:]]
            return {names["param"]: self._scatter(g, tuple(t.shape[1:]), tuple(t.stride()[1:]),
                                                  t.storage_offset() - p.storage_offset(), d, b)}
        lead = gz.dim() - 2 - t.dim()  # z's dimensions (after the samples') that t does not have
        if lead >= 0:
            g = gz.sum(tuple(range(2, 2 + lead))) if lead else gz  # [D, B, *t.shape with broadcast sizes]
        else:  # t carries a leading 1 against the samples' dimension
            g = gz.unsqueeze(2)
        keep = [2 + k for k, n in enumerate(t.shape) if n == 1 and g.shape[2 + k] != 1]
        if keep:
            g = g.sum(keep, keepdim=True)
        return {names["param"]: self._scatter(g, tuple(t.shape), tuple(t.stride()),
                                              t.storage_offset() - p.storage_offset(), d, b)}

    def _scatter(self, g, shape, stride, offset, d, b):
        """[D, B, *θ.shape]: each g[d, n] (of the view's ``shape``) written where the view sits in θ, zeros elsewhere."""
        p = self.param
        out = g.new_zeros(d * b, p.numel())
        view = out.as_strided((d * b,) + shape, (p.numel(),) + stride, offset)
        view.copy_(g.reshape((d * b,) + shape))
        return out.view(d, b, *p.shape)


def is_bare(unit) -> bool:
    return isinstance(getattr(unit, "handler", None), BareAddHandler)


class _Tap(TorchFunctionMode):
    """Calls ``on_io(i, t, z)`` for the addition (or concatenation) z of watched parameter i's view t, and
    ``on_io(i, t, None)`` for any other use of it (a misfire); views of θ are followed, not counted as uses."""

    def __init__(self, handlers: dict[int, BareAddHandler], on_io):
        super().__init__()
        self.handlers, self.on_io = handlers, on_io  # unit index -> handler (its parameter, where it was used)
        self.watched = {id(h.param): (i, h.param) for i, h in handlers.items()}
        self.views: dict[int, tuple[weakref.ref, int]] = {}  # id(view) -> (ref, unit index)

    def _which(self, x):
        if not isinstance(x, torch.Tensor):
            return None
        w = self.watched.get(id(x))
        if w is not None and w[1] is x:
            return w[0]
        v = self.views.get(id(x))
        if v is not None and v[0]() is x:
            return v[1]
        return None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        leaves = tree_leaves((args, kwargs))
        hits = [(x, i) for x in leaves if (i := self._which(x)) is not None]
        if not hits or not any(isinstance(o, torch.Tensor) and o.is_floating_point() for o in tree_leaves(out)):
            return out  # not a use that carries θ's values on (``.shape``, ``.requires_grad``, a comparison)
        if len(hits) == 1 and isinstance(out, torch.Tensor) and out._is_view() and \
                out._base is self.handlers[hits[0][1]].param:
            self.views[id(out)] = (weakref.ref(out), hits[0][1])  # a view of θ: follow it
            return out
        if func in ADDS and not kwargs and len(args) == 2 and len(hits) == 1 and isinstance(out, torch.Tensor):
            t, i = hits[0]
            a = args[1] if args[0] is t else args[0]
            if isinstance(a, torch.Tensor) and a.shape == out.shape:
                self.handlers[i].where = ("add",)
                self.on_io(i, t, out)
                return out
        if func is torch.cat and len(hits) == 1 and isinstance(out, torch.Tensor) and out.dim():
            t, i = hits[0]
            seq = args[0] if args else kwargs.get("tensors")
            dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
            at = [k for k, x in enumerate(seq) if x is t] if isinstance(seq, (list, tuple)) else []
            if len(at) == 1 and isinstance(dim, int) and dim % out.dim() != 0 and t.dim() == out.dim():
                dim %= out.dim()
                self.handlers[i].where = ("cat", dim, sum(x.shape[dim] for x in seq[: at[0]]))
                self.on_io(i, t, out)
                return out
        for x, i in hits:
            self.on_io(i, x, None)
        return out


class _Handle:
    def __init__(self, mode: _Tap):
        self.mode = mode
        mode.__enter__()

    def remove(self) -> None:
        if self.mode is not None:
            self.mode.__exit__(None, None, None)
            self.mode = None


def install(indexed_units: list, on_io) -> _Handle:
    """Watch the bare parameters of ``[(i, unit), ...]`` until the returned handle's ``remove()``."""
    return _Handle(_Tap({i: u.handler for i, u in indexed_units}, on_io))
