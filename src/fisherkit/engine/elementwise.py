"""Closed-form per-sample gradients for layers whose parameters act elementwise or by lookup — no
``vmap`` on the hot path. One handler per layer type; a new one is a class here plus a line in
``HANDLERS``.

From a layer's input x and the gradients gz of its output along the D backward directions
(``[D, B, *, d]``), the per-sample, per-direction gradients ``[D, B, *shape]`` are sums over the
positions * a sample shares the parameter across:

* ``nn.LayerNorm`` (one normalised dimension): ∂/∂γ = Σ_t gz_t ⊙ x̂_t, ∂/∂β = Σ_t gz_t with
  x̂ = (x − μ) / √(σ² + ε);
* RMSNorm (``nn.RMSNorm`` and HuggingFace ``*RMSNorm`` modules with a ``weight`` of size d):
  ∂/∂w = Σ_t gz_t ⊙ x̂_t with x̂ = x / √(mean(x²) + ε) (Gemma's (1 + w) scaling has the same
  derivative);
* ``nn.Embedding``: ∂/∂E = Σ_t e_{id_t} gz_tᵀ, a scatter of the output gradients into the rows of
  the looked-up tokens (the row ``padding_idx`` gets none, as in PyTorch).

(HuggingFace ``Conv1D``, GPT-2's Linear with its weight stored [in, out], is a Kronecker hook unit:
``engine.units.transposed_linear``.)

Every handler's forward formula is checked against the module's own output when the plan is
settled; a module it does not reproduce (another normalisation, ``max_norm``) goes to ``torch.func``.
"""

from __future__ import annotations

import torch
from torch import nn

from .accumulate import hook_persample
from .data import wide


def _positions_sum(t: torch.Tensor) -> torch.Tensor:
    """[D, B, *, d] → [D, B, d]: the sum over the positions a sample shares the parameter across."""
    return t.reshape(t.shape[0], t.shape[1], -1, t.shape[-1]).sum(2)


class Handler:
    """Per-sample gradients of one module type's own parameters from (input, output gradients)."""

    params: tuple[str, ...] = ()  # the module's parameter names this handler differentiates

    def accepts(self, module: nn.Module) -> bool:
        raise NotImplementedError

    def forward(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The module's output from its input by the handler's formula (checked when settling)."""
        raise NotImplementedError

    def persample(self, module, x, gz, names: dict[str, str]) -> dict[str, torch.Tensor]:
        """``names`` maps this handler's parameter (``"weight"``) to the full name to return."""
        raise NotImplementedError


class LayerNormHandler(Handler):
    params = ("weight", "bias")

    def accepts(self, module):
        return isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1

    def _xhat(self, module, x):
        """x̂ in the module's dtype, or in float32 for a 16-bit input (as PyTorch's own kernel computes it)."""
        x = wide(x.to(module.weight.dtype if module.weight is not None else x.dtype))
        mu = x.mean(-1, keepdim=True)
        var = x.var(-1, unbiased=False, keepdim=True)
        return (x - mu) / torch.sqrt(var + module.eps)

    def forward(self, module, x):
        y = self._xhat(module, x)
        if module.weight is not None:
            y = y * module.weight
        if module.bias is not None:
            y = y + module.bias
        return y

    def persample(self, module, x, gz, names):
        out = {}
        if "weight" in names:
            out[names["weight"]] = _positions_sum(gz * self._xhat(module, x).unsqueeze(0))
        if "bias" in names:
            out[names["bias"]] = _positions_sum(gz)
        return out


class RMSNormHandler(Handler):
    params = ("weight",)

    def accepts(self, module):
        w = getattr(module, "weight", None)
        rms = isinstance(module, getattr(nn, "RMSNorm", ())) or type(module).__name__.endswith("RMSNorm")
        return rms and isinstance(w, torch.Tensor) and w.dim() == 1 and getattr(module, "bias", None) is None

    def _eps(self, module, x):
        eps = getattr(module, "eps", None)
        if eps is None:
            eps = getattr(module, "variance_epsilon", None)
        return torch.finfo(x.dtype).eps if eps is None else float(eps)

    def _xhat(self, module, x):
        h = wide(x)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self._eps(module, h))
        return h.to(x.dtype)

    def forward(self, module, x):
        out = self._xhat(module, x)
        w = module.weight
        return out * (1 + w) if type(module).__name__.startswith("Gemma") else out * w

    def persample(self, module, x, gz, names):
        return {names["weight"]: _positions_sum(gz * self._xhat(module, x).unsqueeze(0))}


class EmbeddingHandler(Handler):
    params = ("weight",)

    def accepts(self, module):
        return isinstance(module, nn.Embedding) and module.max_norm is None and not module.scale_grad_by_freq

    def forward(self, module, x):
        return module.weight[x]

    def persample(self, module, x, gz, names):
        d, b = gz.shape[:2]
        v, width = module.weight.shape
        ids = x.reshape(b, -1).to(torch.long)  # [B, T]
        g = gz.reshape(d, b, -1, width)  # [D, B, T, width]
        out = gz.new_zeros(d, b * v, width)
        flat = (ids + torch.arange(b, device=ids.device)[:, None] * v).reshape(-1)
        out.index_add_(1, flat, g.reshape(d, -1, width))
        out = out.view(d, b, v, width)
        if module.padding_idx is not None:
            out[:, :, module.padding_idx] = 0
        return {names["weight"]: out}


class TiedLinearHandler(Handler):
    """An ``nn.Linear`` whose weight is tied to another module's (GPT-2's LM head and its token embedding):
    ∂/∂W = Σ_t gz_t ã_tᵀ per sample, handed out as a per-sample gradient so the engine can add the
    other use's before squaring (a Kronecker unit cannot hold a sum of two layers' gradients)."""

    params = ("weight", "bias")

    def accepts(self, module):
        return isinstance(module, nn.Linear)

    def forward(self, module, x):
        return torch.nn.functional.linear(x, module.weight, module.bias)

    def persample(self, module, x, gz, names):
        d, b = gz.shape[:2]
        a = x.reshape(b, -1, x.shape[-1]).to(gz.dtype)
        g = gz.reshape(d, b, -1, gz.shape[-1])
        out = {}
        if "weight" in names:
            out[names["weight"]] = hook_persample(a, g)
        if "bias" in names:
            out[names["bias"]] = g.sum(2)
        return out


HANDLERS: list[Handler] = [LayerNormHandler(), RMSNormHandler(), EmbeddingHandler()]
TIED_HANDLERS: list[Handler] = [EmbeddingHandler(), TiedLinearHandler()]  # the uses of a tied weight


def handler_for(module: nn.Module, tied: bool = False) -> Handler | None:
    """The handler of ``module``; ``tied``: for a module holding a tied weight (each use then gives its
    per-sample gradient, and the engine sums the uses before squaring)."""
    for h in TIED_HANDLERS if tied else HANDLERS:
        if h.accepts(module):
            return h
    return None
