"""Which parameters fisherkit differentiates, and how: hooks on Linear/Conv, torch.func otherwise.

A *unit* is a group of parameters whose statistics are gathered together:

* ``HookUnit``: the weight (and bias) of one ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` called
  exactly once per forward. Its per-sample gradient is Σ_t g_t ãᵀ_t, with ã the layer input (conv:
  unfolded patches) extended by a 1 for the bias, and g the gradient of the layer output. The packed
  in-projection of ``nn.MultiheadAttention`` is one too (``engine.attention`` exposes its input and
  output, and makes the module's ``out_proj`` fire like any Linear).
* ``ElemUnit``: the parameters of a LayerNorm / RMSNorm / Embedding (``engine.elementwise``),
  whose per-sample gradients follow in closed form from the layer's input and output gradients.
* every other requested parameter is differentiated per sample with torch.func (``func_names``).

A parameter shared by several modules (tied weights, e.g. an embedding and an LM head) is never
given to a hook: its per-sample gradient must sum both uses before squaring, which torch.func does.
"""

from __future__ import annotations

import contextlib

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import FisherkitError
from ..params import ParamInfo

HOOKABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


@dataclass
class HookUnit:
    module: nn.Module
    module_name: str
    weight: str
    bias: str | None
    weight_shape: tuple[int, ...]
    via: nn.Module | None = None  # the MultiheadAttention whose recomputed forward exposes this unit
    transposed: bool = False  # weight stored [in, out] (HuggingFace Conv1D): y = x W + b

    @property
    def names(self) -> list[str]:
        return [self.weight] + ([self.bias] if self.bias else [])

    @property
    def linear(self) -> bool:
        """A Linear map of the last dimension (not a convolution): nn.Linear, HF Conv1D, an attention in-projection."""
        return isinstance(self.module, nn.Linear) or self.transposed or self.module is self.via

    @property
    def in_features(self) -> int:  # columns of the combined [W | b] matrix
        w = self.weight_shape
        if self.transposed:
            return w[0] + (1 if self.bias else 0)
        n = 1
        for d in w[1:]:
            n *= d
        return n + (1 if self.bias else 0)

    @property
    def out_features(self) -> int:
        return self.weight_shape[1] if self.transposed else self.weight_shape[0]


@dataclass
class ElemUnit:
    module: nn.Module
    module_name: str
    handler: object  # engine.elementwise.Handler
    names: dict  # handler parameter ("weight") -> full parameter name
    # called on input shared by the batch, expanded to B rows: "row" — one row (position ids [1, T]); "new" — no
    # samples' dimension at all (position ids [T], an output [T, d] broadcast against [B, T, d])
    broadcast: str | bool = False

    @property
    def weight(self) -> str:  # for messages
        return next(iter(self.names.values()))


@dataclass
class Plan:
    """How each requested parameter is differentiated."""

    info: ParamInfo
    hook_units: list[HookUnit] = field(default_factory=list)
    func_names: list[str] = field(default_factory=list)
    elem_units: list[ElemUnit] = field(default_factory=list)

    @property
    def units(self) -> list:
        """Every hooked unit: Kronecker (``hook_units``) then elementwise (``elem_units``)."""
        return list(self.hook_units) + list(self.elem_units)

    @property
    def other_names(self) -> list[str]:
        """Parameters without Kronecker factors (elementwise units and torch.func), in parameter order."""
        mine = set(self.func_names) | {n for u in self.elem_units for n in u.names.values()}
        return [n for n in self.info.names if n in mine]

    def describe_fallback(self) -> str:
        return ", ".join(self.other_names)

    def without(self, units: list[HookUnit]) -> "Plan":
        """A new plan in which ``units`` (hooks that did not fire exactly once) go to the torch.func path."""
        if not units:
            return self
        gone = {id(u) for u in units}
        moved = {n for u in units for n in (u.names.values() if isinstance(u, ElemUnit) else u.names)}
        grown = True
        while grown:  # the other uses of a tied weight follow it (its gradient must be summed in one place)
            more = [u for u in self.elem_units if id(u) not in gone and moved & set(u.names.values())]
            gone |= {id(u) for u in more}
            grown = bool(more)
            moved |= {n for u in more for n in u.names.values()}
        return Plan(self.info, [u for u in self.hook_units if id(u) not in gone],
                    [n for n in self.info.names if n in moved or n in self.func_names],
                    [u for u in self.elem_units if id(u) not in gone])


def transposed_linear(module: nn.Module) -> bool:
    """HuggingFace ``Conv1D`` (GPT-2's attention and MLP): a Linear with its weight stored [in, out]."""
    w = getattr(module, "weight", None)
    return (type(module).__name__ == "Conv1D" and isinstance(w, torch.Tensor) and w.dim() == 2
            and getattr(module, "nf", w.shape[1]) == w.shape[1])


def _hookable(module: nn.Module) -> bool:
    if transposed_linear(module):
        return True
    if not isinstance(module, HOOKABLE):
        return False
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str):
            return False
    return True


def _shared(model: nn.Module) -> dict[int, int]:
    """id → number of modules registering it, for parameters registered in more than one (tied weights)."""
    seen: dict[int, int] = {}
    for m in model.modules():
        for p in m._parameters.values():
            if p is not None:
                seen[id(p)] = seen.get(id(p), 0) + 1
    return {k: c for k, c in seen.items() if c > 1}


def make_plan(model: nn.Module, chosen: dict[str, nn.Parameter], use_hooks: bool = True,
              elementwise: bool = False) -> Plan:
    """Assign each chosen parameter to a hook unit (Linear/Conv weight [+ bias]), an elementwise unit
    (``elementwise=True``: LayerNorm, RMSNorm, Embedding) or to torch.func.

    A tied weight (registered in several modules, e.g. GPT-2's token embedding and LM head) gets one
    elementwise unit per use when every use is an Embedding or a Linear (``elementwise=True``): each
    gives its per-sample gradient and the engine sums them before squaring. Otherwise it goes to
    torch.func, which differentiates the shared tensor once."""
    from . import attention
    from .elementwise import handler_for

    info = ParamInfo(list(chosen), [tuple(p.shape) for p in chosen.values()])
    plan = Plan(info)
    covered: set[str] = set()
    if use_hooks:
        tied = _shared(model)
        name_of = {id(p): n for n, p in chosen.items()}
        tied_uses: dict[str, list[ElemUnit]] = {}
        out_proj_of = attention.owners(model)
        for mname, module in model.named_modules():
            prefix = f"{mname}." if mname else ""
            own = {k: p for k, p in module._parameters.items() if p is not None}
            if any(id(p) in tied for p in own.values()):
                h = handler_for(module, tied=True) if elementwise else None
                if h is not None and set(own) <= set(h.params):
                    names = {k: name_of[id(p)] for k, p in own.items() if id(p) in name_of}
                    if names:
                        unit = ElemUnit(module, mname, h, names)
                        for k, p in own.items():
                            if id(p) in tied and id(p) in name_of:
                                tied_uses.setdefault(name_of[id(p)], []).append(unit)
                        plan.elem_units.append(unit)
                continue
            if _hookable(module):
                w, b = prefix + "weight", prefix + "bias"
                if w not in chosen:
                    continue
                has_b = getattr(module, "bias", None) is not None and b in chosen
                plan.hook_units.append(HookUnit(module, mname, w, b if has_b else None, tuple(module.weight.shape),
                                                via=out_proj_of.get(id(module)), transposed=transposed_linear(module)))
                covered.update([w] + ([b] if has_b else []))
            elif attention.packed(module) and prefix + "in_proj_weight" in chosen:
                w, b = prefix + "in_proj_weight", prefix + "in_proj_bias"
                has_b = module.in_proj_bias is not None and b in chosen
                plan.hook_units.append(HookUnit(module, mname, w, b if has_b else None,
                                                tuple(module.in_proj_weight.shape), via=module))
                covered.update([w] + ([b] if has_b else []))
            elif elementwise and (h := handler_for(module)) is not None:
                names = {k: prefix + k for k in h.params if k in own and prefix + k in chosen}
                if names and set(own) <= set(h.params):
                    plan.elem_units.append(ElemUnit(module, mname, h, names))
                    covered.update(names.values())
        # a tied weight is covered only if every module registering it is one of its units
        for n, uses in tied_uses.items():
            if len(uses) != tied[id(chosen[n])]:
                drop = {id(u) for u in uses}
                plan.elem_units = [u for u in plan.elem_units if id(u) not in drop]
        for u in plan.elem_units:
            covered.update(u.names.values())
    plan.func_names = [n for n in chosen if n not in covered]
    if use_hooks and elementwise:  # bare parameters: an addition to an activation is watched (engine.bare)
        from .bare import BareAddHandler

        tied = _shared(model)
        for n in list(plan.func_names):
            owner, _, attr = n.rpartition(".")
            module = model.get_submodule(owner)
            if module._parameters.get(attr) is chosen[n] and id(chosen[n]) not in tied:
                plan.elem_units.append(ElemUnit(module, owner, BareAddHandler(chosen[n]), {"param": n}))
                plan.func_names.remove(n)
    if plan.func_names and plan.elem_units:
        # torch.func must run a per-sample pass over the model anyway: the elementwise parameters ride
        # along in it (measured on the benchmark transformer M4: the closed forms on top of that pass
        # cost more than they save). The closed forms pay off when they remove the pass altogether.
        plan.func_names = [n for n in chosen if n not in covered or
                           any(n in u.names.values() for u in plan.elem_units)]
        plan.elem_units = []
    return plan


def _expanding(i, rows, on_io, mode="row"):
    """A forward hook giving a module called on input shared by the batch (``ElemUnit.broadcast``) an output
    expanded to ``rows`` samples: its one row (``mode="row"``) repeated, or (``"new"``) a samples' dimension
    put in front. The model computes the same (the output was broadcast against the batch anyway), and the
    output's gradient is then per sample."""
    def hook(m, inp, out):
        if rows is None or (mode == "row" and out.shape[0] != 1):
            on_io(i, inp[0], out)
            return None
        if mode == "new":
            z = out.unsqueeze(0).expand(rows, *out.shape)
            on_io(i, inp[0].unsqueeze(0).expand(rows, *inp[0].shape), z)
        else:
            z = out.expand(rows, *out.shape[1:])
            on_io(i, inp[0].expand(rows, *inp[0].shape[1:]), z)
        return z

    return hook


def observe(units: list, on_io, native_without_grad: bool = False, check: list | None = None,
            check_once: bool = False, rows: int | None = None) -> list:
    """Hooks calling ``on_io(i, x, z)`` with the input x and output z of ``units[i]`` at each forward; returns
    their handles. Units exposed by an attention module (``HookUnit.via``) get ``engine.attention``'s
    recomputation (``native_without_grad`` / ``check`` / ``check_once``: see ``attention.install``);
    broadcast units are expanded to ``rows`` samples (``_expanding``)."""
    from . import attention, bare

    handles, vias = [], {}
    taps = [(i, u) for i, u in enumerate(units) if bare.is_bare(u)]
    if taps:
        handles.append(bare.install(taps, on_io))
    for i, u in enumerate(units):
        if bare.is_bare(u):
            continue
        via = getattr(u, "via", None)
        if via is not None:
            vias.setdefault(id(via), [via, None])
            if u.module is via:
                vias[id(via)][1] = i
                continue
        if getattr(u, "broadcast", False):
            mode = "new" if u.broadcast == "new" else "row"
            handles.append(u.module.register_forward_hook(_expanding(i, rows, on_io, mode)))
            continue
        handles.append(u.module.register_forward_hook(lambda m, inp, out, i=i: on_io(i, inp[0], out)))
    for via, i in vias.values():
        record = None if i is None else (lambda x, z, i=i: on_io(i, x, z))
        handles += attention.install(via, record, native_without_grad, check, check_once)
    return handles


def _shape_only(t: torch.Tensor) -> torch.Tensor:
    """A storage-free stand-in (``meta`` device) with t's shape, strides and dtype: the probes of ``settle``
    keep every layer's input and output until the plan is decided, which held three forwards' activations
    at once (M5: 123 MiB for probes of 4 rows, above a whole training step's 70)."""
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")


class Capture:
    """Forward hooks recording each hook unit's input and output during one forward pass."""

    def __init__(self, units: list[HookUnit], settling: bool = False, rows: int | None = None):
        self.units, self.rows = units, rows
        self.inputs: dict[int, list[torch.Tensor]] = {}
        self.outputs: dict[int, list[torch.Tensor]] = {}
        self.unmatched: list[nn.Module] = []  # attention modules whose recomputation differs (settling)
        self._settling = settling
        self._handles = []

    def __enter__(self):
        self._handles = observe(self.units, self._record, native_without_grad=not self._settling,
                                check=self.unmatched if self._settling else None, rows=self.rows)
        return self

    def _record(self, i, x, z):
        if self._settling and isinstance(self.units[i], HookUnit):  # settling reads their shapes only
            x, z = _shape_only(x), (None if z is None else _shape_only(z))
        self.inputs.setdefault(i, []).append(x.detach())
        self.outputs.setdefault(i, []).append(z)

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def misfired(self) -> list[HookUnit]:
        """Units called zero times (bypassed) or several times, and units of an attention module whose
        recomputation did not reproduce its output."""
        bad = {id(m) for m in self.unmatched}
        return [u for i, u in enumerate(self.units)
                if len(self.inputs.get(i, [])) != 1 or self.outputs[i][0] is None
                or id(getattr(u, "via", None)) in bad]


def _probe(model: nn.Module, units: list, x, rows: int, grad: bool = False):
    """``(capture, output)`` of one forward of the first ``rows`` rows of ``x`` with the units observed
    (``grad``: with gradients recorded); nothing of the model changes."""
    from .adapters import call, slice_inputs
    from .functional import no_fused_attention

    saved = [(b, b.detach().clone()) for b in model.buffers()]  # e.g. BatchNorm statistics in train mode
    cuda = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    try:  # the random streams too: a model in training mode (the optimizer's) may draw dropout masks
        with torch.random.fork_rng(devices=cuda), Capture(units, settling=True, rows=rows) as cap, \
                torch.set_grad_enabled(grad), no_fused_attention():
            out = call(model, slice_inputs(x, slice(0, rows)))
    finally:
        with torch.no_grad():
            for b, v in saved:
                b.copy_(v)
    return cap, out


def _per_sample_each(out, zs, rows: int) -> list[bool]:
    """Per z of ``zs`` (one backward): whether the last sample's output depends on row ``rows − 1`` of z only
    (what a per-sample gradient from z needs); a model that uses a shared row as one tensor fails this."""
    from .adapters import input_tensors

    ts = [t for t in input_tensors(out) if t.is_floating_point() and t.requires_grad and t.dim() and t.shape[0] == rows]
    ok = [z is not None and z.requires_grad and z.dim() > 0 and z.shape[0] == rows for z in zs]
    if not ts or not any(ok):
        return [False] * len(zs)
    gs = torch.autograd.grad(ts[0][rows - 1].sum(), [z for z, k in zip(zs, ok) if k], allow_unused=True)
    it = iter(gs)
    res = []
    for k in ok:
        g = next(it) if k else None
        res.append(g is not None and bool((g[: rows - 1] == 0).all()) and bool(g[rows - 1].abs().sum() > 0))
    return res


def _same_output(a, b) -> bool:
    from .adapters import input_tensors

    ta, tb = input_tensors(a), input_tensors(b)
    return len(ta) == len(tb) and all(
        x.shape == y.shape and (not x.is_floating_point() or torch.allclose(x, y, rtol=1e-5, atol=1e-7))
        for x, y in zip(ta, tb))


def _positional(u) -> bool:
    """Whether the unit's input may carry positions before or after the samples ([B, T, d] or [T, B, d])."""
    if isinstance(u, HookUnit):
        return u.linear
    return True


def settle(model: nn.Module, plan: Plan, x) -> Plan:
    """The plan for this model, settled on forwards of (the first rows of) a batch ``x``.

    A Linear/Conv layer whose hook fires zero times (bypassed) or several times (a layer reused)
    cannot be factored from one (input, output) pair, and one whose input does not have the samples
    as its first dimension (a sequence-first ``[T, B, d]`` layout inside the model, or samples
    flattened with positions) cannot be summed per sample from it: their parameters move to the
    torch.func path, which is right for any layout. The samples' dimension is found by two probe
    forwards of r and r − 1 rows (a dimension of size r that is not the samples' would have to
    shrink with them; a batch of one sample is probed as two copies of it). An elementwise unit
    called on input shared by the batch — one row (GPT-2's position embedding looks up position ids
    of shape [1, T]) or no samples' dimension at all (``wpe(torch.arange(T))``: an output [T, d] added
    to [B, T, d]), the same in both probes — is kept as a ``broadcast`` unit: its output is expanded to
    the batch, so its gradient is per sample, when a third probe with that expansion gives the model's
    own output and each sample's output depends on its own row only. A bare parameter watched by
    ``engine.bare`` must be used once, by an addition whose output has the samples first and passes the
    same gradient probe. The probes run without gradients (the third with) on a copy of the buffers
    and the RNG, so nothing of the model changes (BatchNorm running statistics included).
    """
    if not plan.units or x is None:
        return plan
    from dataclasses import replace

    from .adapters import batch_len, map_inputs
    from .bare import is_bare

    units = plan.units
    if batch_len(x) == 1:  # one sample (e.g. one long sequence): probe on it twice, so r and r − 1 rows exist
        x = map_inputs(x, lambda t: torch.cat([t, t]) if t.dim() else t)
    rows = min(batch_len(x), 4)  # a probe costs ∝ rows; 4 and 3 rows tell the samples' dimension apart
    cap, out = _probe(model, units, x, rows)
    bad = cap.misfired()
    # elementwise units whose input may not carry the samples: shared by the batch if it stays the same
    # in a probe of rows − 1 samples
    bares = [u for u in units if is_bare(u) and u not in bad]
    if rows < 2:
        bad += bares
    maybe = [u for i, u in enumerate(units) if rows >= 2 and isinstance(u, ElemUnit) and u not in bad
             and not is_bare(u) and cap.inputs[i][0].shape[0] != rows]
    for i, u in enumerate(units):  # a bare parameter: its addition's output has the samples first
        if u in bares and u not in bad and not u.handler.fits(cap.inputs[i][0], cap.outputs[i][0], rows):
            bad.append(u)
    bad += [u for i, u in enumerate(units) if u not in bad and u not in maybe and not is_bare(u)
            and cap.inputs[i][0].shape[0] != rows]
    shared: dict[int, str] = {}  # id(unit) -> "row" | "new"
    if rows >= 2 and (maybe or any(_positional(u) and cap.inputs[i][0].dim() >= 2
                                   for i, u in enumerate(units) if u not in bad)):
        cap2, _ = _probe(model, units, x, rows - 1)
        for i, u in enumerate(units):
            if u in bad:
                continue
            if len(cap2.inputs.get(i, [])) != 1 or cap2.outputs[i][0] is None:
                bad.append(u)
            elif is_bare(u):  # the parameter's view must not change with the rows (but for its expansion), z must
                if not u.handler.fits(cap2.inputs[i][0], cap2.outputs[i][0], rows - 1) or \
                        cap2.inputs[i][0].shape[1:] != cap.inputs[i][0].shape[1:] or \
                        (u.handler.where[0] == "add" and cap2.inputs[i][0].shape != cap.inputs[i][0].shape):
                    bad.append(u)
            elif isinstance(u, ElemUnit) and (cap2.inputs[i][0].shape, cap2.outputs[i][0].shape) == \
                    (cap.inputs[i][0].shape, cap.outputs[i][0].shape):  # (may be [T] with T = rows)
                xi, zi = cap.inputs[i][0], cap.outputs[i][0]
                shared[id(u)] = "row" if xi.dim() and xi.shape[0] == 1 and zi.shape[0] == 1 else "new"
            elif u in maybe or cap2.inputs[i][0].shape[0] != rows - 1:
                bad.append(u)
    else:
        bad += maybe

    def widen(us):
        return [replace(u, broadcast=shared[id(u)]) if id(u) in shared else u for u in us]

    bares = [u for u in bares if u not in bad]
    if shared or bares:  # with gradients: is each sample's output a function of its own row of z only?
        wide = widen(units)
        try:
            cap3, out3 = _probe(model, wide, x, rows, grad=True)
        except torch.OutOfMemoryError:
            raise
        except Exception:  # noqa: BLE001 - the model cannot take an expanded output (T5's relative bias
            # [T, T, h], permuted as a 3-D tensor): those units go to torch.func; the bare taps change nothing
            bad += [u for u in units if id(u) in shared]
            shared, wide = {}, units
            cap3, out3 = _probe(model, wide, x, rows, grad=True) if bares else (None, None)
    if shared or bares:
        idx = [i for i, u in enumerate(wide) if getattr(u, "broadcast", False) or is_bare(u)]
        each = dict(zip(idx, _per_sample_each(out3, [cap3.outputs[i][0] if len(cap3.outputs.get(i, [])) == 1
                                                     else None for i in idx], rows)))
        bad += [units[i] for i in idx if is_bare(units[i]) and not each[i]]
        if shared and _same_output(out, out3) and all(each[i] for i in idx if not is_bare(units[i])):
            plan = Plan(plan.info, plan.hook_units, plan.func_names, widen(plan.elem_units))
            swap = {id(a): b for a, b in zip(units, plan.units)}
            bad = [swap.get(id(u), u) for u in bad]
            units = plan.units
        else:
            bad += [u for u in units if id(u) in shared]
    for i, u in enumerate(units):  # an elementwise handler must reproduce the module's own output
        if isinstance(u, ElemUnit) and not is_bare(u) and all(u is not b for b in bad):
            try:  # (a different formula is off by O(1); a 16-bit output only by a few units of its round-off)
                z = cap.outputs[i][0]
                tol = max(1e-3, 8 * torch.finfo(z.dtype).eps) if z.is_floating_point() else 1e-3
                ok = torch.allclose(u.handler.forward(u.module, cap.inputs[i][0]).to(z.dtype), z,
                                    rtol=tol, atol=max(1e-5, tol / 100))
            except Exception:  # noqa: BLE001 - any mismatch of the formula means: use torch.func
                ok = False
            if not ok:
                bad.append(u)
    plan = plan.without(bad)
    if plan.func_names and plan.elem_units:  # a torch.func pass anyway: the closed forms ride along (make_plan)
        plan = plan.without(list(plan.elem_units))
    return plan


@contextlib.contextmanager
def only_chosen_grads(model: nn.Module, names: list[str]):
    """Inside, only the chosen parameters require gradients, so the forward records no graph upstream of the
    first of them (the Fisher of a head or of LoRA adapters does not hold the whole model's activations);
    restored on exit, whatever happens."""
    keep = set(names)
    frozen = [p for n, p in model.named_parameters() if p.requires_grad and n not in keep]
    try:
        for p in frozen:
            p.requires_grad_(False)
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


def capture_forward(model: nn.Module, x, plan: Plan, adapter=None, one_direction: bool = False):
    """One forward pass with hooks on the plan's (settled) units.

    Returns ``(output, inputs, outputs)``, the last two aligned with ``plan.units`` (hook units, then
    elementwise units); a unit that did not fire exactly once (a plan not settled on this model) raises.
    """
    from .functional import no_fused_attention

    units = plan.units
    from .adapters import DEFAULT

    from .adapters import batch_len

    # one backward direction (mc with one sample, empirical): no vmap over the backward, so the fused
    # attention kernels may stay (faster; no T × T weights stored)
    with Capture(units, rows=batch_len(x)) as cap, torch.set_grad_enabled(bool(units)), \
            no_fused_attention(math_sdpa=not one_direction), only_chosen_grads(model, plan.info.names):
        out = (adapter or DEFAULT).forward(model, x)
    bad = cap.misfired()
    if bad:
        j = next(k for k, u in enumerate(units) if u is bad[0])
        raise FisherkitError(
            f"layer {bad[0].module_name!r} was called {len(cap.inputs.get(j, []))} times in this "
            "forward but once when the plan was settled; the model's control flow changed between batches"
        )
    return out, [cap.inputs[j][0] for j in range(len(units))], [cap.outputs[j][0] for j in range(len(units))]


def unit_activations(unit: HookUnit, x: torch.Tensor) -> torch.Tensor:
    """ã of shape [B, T, I]: the layer input (conv: unfolded patches) with a 1 appended for the bias."""
    m = unit.module
    if unit.linear:
        a = x.reshape(x.shape[0], -1, x.shape[-1])
    else:
        if isinstance(m, nn.Conv1d):
            x2 = x.unsqueeze(2)
            ks, st, pd, dl = (1, m.kernel_size[0]), (1, m.stride[0]), (0, m.padding[0]), (1, m.dilation[0])
        else:
            x2, ks, st, pd, dl = x, m.kernel_size, m.stride, m.padding, m.dilation
        a = torch.nn.functional.unfold(x2, ks, dilation=dl, padding=pd, stride=st).transpose(1, 2)
    if unit.bias:  # one allocation: copy in, then a column of ones
        ext = a.new_empty(a.shape[:-1] + (a.shape[-1] + 1,))
        ext[..., :-1] = a
        ext[..., -1] = 1
        a = ext
    return a


def unit_output_grads(unit: HookUnit, gz: torch.Tensor) -> torch.Tensor:
    """Output gradients [D, B, *out_shape] → [D, B, T, O] with T the positions sharing the weight."""
    d, b = gz.shape[:2]
    if unit.linear:
        return gz.reshape(d, b, -1, gz.shape[-1])
    return gz.reshape(d, b, gz.shape[2], -1).transpose(2, 3)
