"""The torch.func path: per-sample gradients and Jacobian products for any nn.Module.

``persample_grads`` computes Jₙᵀ V[d, n] for every sample n and direction d with
``vmap(vjp)`` over ``functional_call`` (chunked over samples to a memory budget); the sum over
shared positions (sequence tokens) happens inside the vjp, i.e. before any squaring.
``jvp_vjp`` gives Jᵀ W J v for a batch without forming any per-sample gradient.
"""

from __future__ import annotations

import contextlib

import torch
from torch.func import jvp, vjp, vmap


@contextlib.contextmanager
def no_fused_attention(math_sdpa: bool = True):
    """Use plain-op attention: fused Transformer / flash kernels have no forward-mode AD or vmap rules.

    ``math_sdpa=False`` keeps the fused ``scaled_dot_product_attention`` kernels (a backward along one
    direction needs no vmap; they do not store the T × T attention weights) and only turns off the
    ``nn.MultiheadAttention`` / ``TransformerEncoderLayer`` fast path, which would bypass the hooks."""
    with contextlib.ExitStack() as stack:
        mha = getattr(torch.backends, "mha", None)
        if mha is not None and hasattr(mha, "set_fastpath_enabled"):
            before = mha.get_fastpath_enabled()
            mha.set_fastpath_enabled(False)
            stack.callback(mha.set_fastpath_enabled, before)
        if math_sdpa:
            try:
                from torch.nn.attention import SDPBackend, sdpa_kernel

                stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
            except ImportError:  # pragma: no cover - older torch
                pass
        yield


def _state(model: torch.nn.Module):
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    return params, buffers


def persample_grads(
    model: torch.nn.Module,
    names: list[str],
    x,
    v: torch.Tensor,
    max_memory: float = 2**30,
    adapter=None,
) -> dict[str, torch.Tensor]:
    """Per-sample, per-direction gradients of the parameters ``names``: name → ``[D, B, *shape]``.

    ``v`` has shape ``[D, B, *out]``; the result for sample n, direction d is ∂(f(xₙ)·v[d, n])/∂θ.
    ``x`` is a tensor, a tuple or a mapping of tensors (``engine.adapters``), each with B rows.
    """
    from .adapters import DEFAULT, map_inputs, slice_inputs

    adapter = adapter or DEFAULT
    params, buffers = _state(model)
    train = {n: params[n] for n in names}
    fixed = {n: p for n, p in params.items() if n not in train}

    def f_single(p, xb):
        out = adapter.functional(model, ({**fixed, **p}, buffers), map_inputs(xb, lambda t: t.unsqueeze(0)))
        return out.squeeze(0)

    def one_sample(xb, vb):
        _, pullback = vjp(lambda p: f_single(p, xb), train)
        return vmap(pullback)(vb)[0]

    def looped(xc, vc):
        """The same, one sample at a time: for models whose forward vmap cannot batch (data-dependent
        control flow, e.g. HuggingFace attention-mask checks); directions are still one vmap."""
        rows = []
        for s in range(vc.shape[1]):
            xs = slice_inputs(xc, slice(s, s + 1))
            _, pullback = vjp(lambda p: adapter.functional(model, ({**fixed, **p}, buffers), xs).squeeze(0), train)
            rows.append(vmap(pullback)(vc[:, s])[0])
        return {n: torch.stack([r[n] for r in rows]) for n in names}

    per = vmap(one_sample, in_dims=(0, 1), randomness="different")
    d, b = v.shape[0], v.shape[1]
    numel = sum(t.numel() for t in train.values())
    itemsize = v.element_size()
    chunk = max(1, int(max_memory // max(1, 4 * d * numel * itemsize)))
    pieces = []
    with no_fused_attention():
        for s in range(0, b, chunk):
            xc, vc = slice_inputs(x, slice(s, s + chunk)), v[:, s : s + chunk]
            if per is not None:
                try:
                    pieces.append(per(xc, vc))
                    continue
                except RuntimeError as e:
                    if "vmap" not in str(e):
                        raise
                    per = None  # this model cannot be vmapped over samples: loop from here on
            pieces.append(looped(xc, vc))
    out = {}
    for n in names:
        g = torch.cat([p[n] for p in pieces], 0) if len(pieces) > 1 else pieces[0][n]
        out[n] = g.transpose(0, 1)  # [D, B, *shape]
    return out


def jvp_vjp(model: torch.nn.Module, names: list[str], x, v: dict[str, torch.Tensor], weight_fn, adapter=None):
    """Jᵀ W(J v) for a batch: J = ∂f/∂θ for the parameters ``names``; ``weight_fn(f, Jv)`` gives W(Jv).

    Returns (output f, dict name → tensor). Costs one forward pass with its JVP, and one backward:
    the JVP's primal output is recorded by ordinary autograd, so the VJP reuses that forward.
    """
    params, buffers = _state(model)
    train = {n: params[n].requires_grad_() for n in names}  # detached copies: the model is untouched
    fixed = {n: p for n, p in params.items() if n not in train}

    from .adapters import DEFAULT

    def f(p):
        return (adapter or DEFAULT).functional(model, ({**fixed, **p}, buffers), x)

    with no_fused_attention(), torch.enable_grad():
        out, jv = jvp(f, (train,), (v,))
        w = weight_fn(out.detach(), jv.detach())
        gs = torch.autograd.grad(out, list(train.values()), w, allow_unused=True)
    g = {n: torch.zeros_like(p) if gi is None else gi for (n, p), gi in zip(train.items(), gs)}
    return out.detach(), g


def output_with_params(model: torch.nn.Module, theta: dict[str, torch.Tensor], x, adapter=None) -> torch.Tensor:
    """Model logits with some parameters replaced by ``theta`` (others as they are)."""
    from .adapters import DEFAULT

    params, buffers = _state(model)
    params.update(theta)
    return (adapter or DEFAULT).functional(model, (params, buffers), x)
