"""``nn.MultiheadAttention`` without torch.func: its packed in-projection and its ``out_proj`` as
ordinary Kronecker units.

PyTorch's attention calls ``F.multi_head_attention_forward`` with the raw ``in_proj_weight`` and
``out_proj.weight``: no Linear module fires, so neither projection could be hooked and both went
through the per-sample ``vmap(vjp)`` pass. While fisherkit gathers statistics, a forward hook
replaces the module's output by the same attention written in explicit operations,

    [q | k | v] = x W_inᵀ + b_in          (self-attention: query is key is value = x, [B, T, E])
    oₕ = softmax(qₕ kₕᵀ / √(E/H) + M) vₕ   (per head h; M the attention and key-padding masks)
    out = out_proj(o)                      (the Linear module itself: its hook fires)

so the in-projection is a Linear layer of weight ``[3E, E]`` applied to x — its per-sample gradient
is Σ_t g_t x_tᵀ with g the gradient of [q | k | v], and its KFAC factors are A = x xᵀ (E × E) and
G = g gᵀ (3E × 3E) — and ``out_proj`` is hooked like any Linear. The recomputation is checked against
the module's own output when the plan is settled; a module it does not reproduce (cross-attention's
in-projection, ``bias_k``, ``add_zero_attn``, separate q/k/v weights, dropout in training mode,
unbatched inputs) keeps the torch.func path for what it cannot expose.

The module's own forward still runs (hooks cannot skip it); inside fisherkit's loop it runs without
gradients, so its only cost is one attention forward.
"""

from __future__ import annotations

import math

import torch
from torch import nn

_ARGS = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask", "average_attn_weights",
         "is_causal")
_DEFAULTS = {"key_padding_mask": None, "need_weights": True, "attn_mask": None, "average_attn_weights": True,
             "is_causal": False}


def packed(module: nn.Module) -> bool:
    """Whether ``module`` is a MultiheadAttention whose in-projection can be exposed as one Linear map."""
    return (isinstance(module, nn.MultiheadAttention) and module._qkv_same_embed_dim and module.bias_k is None
            and module.bias_v is None and not module.add_zero_attn and module.in_proj_weight is not None)


def owners(model: nn.Module) -> dict[int, nn.Module]:
    """id(out_proj) → its MultiheadAttention, for every attention module this file can recompute."""
    return {id(m.out_proj): m for m in model.modules() if packed(m)}


def _float_mask(mask, dtype):
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    return mask.to(dtype)


def recompute(module: nn.MultiheadAttention, args: tuple, kwargs: dict, on_in_proj=None):
    """The module's output ``(out, weights)`` in explicit operations, or None where this file does not
    reproduce it. ``on_in_proj(x, qkv)`` receives the in-projection's input and output (self-attention)."""
    call = dict(_DEFAULTS)
    call.update(zip(_ARGS, args))
    call.update(kwargs)
    q_in, k_in, v_in = call["query"], call["key"], call["value"]
    if q_in.dim() != 3 or (module.training and module.dropout > 0):
        return None
    self_attention = q_in is k_in and k_in is v_in
    if not module.batch_first:
        q_in, k_in, v_in = (t.transpose(0, 1) for t in (q_in, k_in, v_in))
    b, t, e = q_in.shape
    s, h = k_in.shape[1], module.num_heads
    hd = e // h
    w, bias = module.in_proj_weight, module.in_proj_bias
    if self_attention:
        qkv = torch.nn.functional.linear(q_in, w, bias)
        if on_in_proj is not None:
            on_in_proj(q_in, qkv)
        q, k, v = qkv.split(e, dim=-1)
    else:
        bq, bk, bv = (None, None, None) if bias is None else bias.split(e)
        wq, wk, wv = w.split(e)
        f = torch.nn.functional.linear
        q, k, v = f(q_in, wq, bq), f(k_in, wk, bk), f(v_in, wv, bv)
    q = q.reshape(b, t, h, hd).transpose(1, 2)
    k = k.reshape(b, s, h, hd).transpose(1, 2)
    v = v.reshape(b, s, h, hd).transpose(1, 2)
    kpm, mask = call["key_padding_mask"], call["attn_mask"]
    if call["is_causal"] and mask is None:
        return None  # the module itself refuses this call
    if call["is_causal"] and kpm is None and not call["need_weights"]:
        mask = torch.ones(t, s, dtype=torch.bool, device=q.device).triu_(1)  # what the module then uses
    scores = (q * (1.0 / math.sqrt(hd))) @ k.transpose(-2, -1)  # [B, H, T, S]
    mask = _float_mask(mask, scores.dtype)
    if mask is not None:
        scores = scores + (mask.view(b, h, t, s) if mask.dim() == 3 and mask.shape[0] != 1 else mask)
    kpm = _float_mask(kpm, scores.dtype)
    if kpm is not None:
        scores = scores + kpm.view(b, 1, 1, s)
    attn = torch.softmax(scores, dim=-1)
    o = (attn @ v).transpose(1, 2).reshape(b, t, e)
    out = module.out_proj(o)
    if not module.batch_first:
        out = out.transpose(0, 1)
    weights = None
    if call["need_weights"]:
        weights = attn.mean(1) if call["average_attn_weights"] else attn
    return out, weights


class _Listener:
    """One observer of a recomputed attention module (fisherkit's loop, or the optimizer's recorder)."""

    def __init__(self, tap, on_in_proj, native_without_grad, check, check_once):
        self.tap, self.on_in_proj = tap, on_in_proj
        self.native_without_grad, self.check, self.check_once = native_without_grad, check, check_once

    def remove(self) -> None:
        self.tap.listeners.remove(self)
        if not self.tap.listeners:
            for h in self.tap.handles:
                h.remove()
            _TAPS.pop(id(self.tap.module), None)


class _Tap:
    """The hooks on one attention module, shared by every listener: the recomputation runs once per
    call however many observers there are (two would call ``out_proj`` twice)."""

    def __init__(self, module):
        self.module, self.listeners, self.grad = module, [], None
        self.handles = [module.register_forward_pre_hook(self._pre, with_kwargs=True),
                        module.register_forward_hook(self._post, with_kwargs=True)]

    def _pre(self, mod, args, kwargs):
        self.grad = torch.is_grad_enabled()
        if self.listeners and all(lst.native_without_grad for lst in self.listeners):
            torch.set_grad_enabled(False)

    def _post(self, mod, args, kwargs, output):
        if self.grad is not None:
            torch.set_grad_enabled(self.grad)
            self.grad = None
        listeners = list(self.listeners)

        def on_in_proj(x, z):
            for lst in listeners:
                if lst.on_in_proj is not None:
                    lst.on_in_proj(x, z)

        new = recompute(mod, args, kwargs, on_in_proj)
        if new is None:
            return None
        checking = [lst for lst in listeners if lst.check is not None]
        if checking:
            ok = torch.allclose(new[0].detach().to(output[0].dtype), output[0].detach(), rtol=1e-3, atol=1e-5) and (
                (new[1] is None) == (output[1] is None))
            for lst in checking:
                if not ok:
                    lst.check.append(mod)
                if lst.check_once:
                    lst.check = None
            if not ok:
                return None
        return new


_TAPS: dict[int, _Tap] = {}


def install(module: nn.MultiheadAttention, on_in_proj, native_without_grad: bool = False, check: list | None = None,
            check_once: bool = False) -> list:
    """Make ``module`` return ``recompute``'s output while the returned handle is not removed.

    ``on_in_proj(x, qkv)`` sees the in-projection's input and output at each call (self-attention).
    ``native_without_grad``: the module's own forward runs without gradients (inside fisherkit's loop,
    whose grad-mode context restores the mode even when that forward raises; used only when every
    listener asks for it). ``check``: a list to which the module is appended when its recomputation
    differs from its own output (that call then keeps the module's output); ``check_once``: only the
    first call is checked."""
    tap = _TAPS.get(id(module))
    if tap is None or tap.module is not module:
        tap = _TAPS[id(module)] = _Tap(module)
    lst = _Listener(tap, on_in_proj, native_without_grad, check, check_once)
    tap.listeners.append(lst)
    return [lst]
