"""Expected Gradient Length: how far labelling x would move the model, in expectation over its label.

    EGL(x) = Σ_y p(y | x; θ) ‖∇θ ℓ(x, y; θ)‖²₂ ,   ℓ = −log p(y | x; θ)

(Settles et al. 2008; Huang et al. 2016 derive it from maximising the Fisher information of the
labelled set.) With J = ∂f/∂θ the Jacobian of the outputs and r_y = ∂ℓ/∂f the output residual
(for softmax logits r_y = p − e_y), ∇θ ℓ = Jᵀ r_y and

    EGL(x) = Σ_y p_y ‖Jᵀ r_y‖² = tr(Jᵀ Λ J),   Λ = E_y[r_y r_yᵀ] = diag(p) − p pᵀ,

the trace of the one-point Fisher. The sum over labels is batched: the C residual directions of a
whole batch go through one backward pass (``is_grads_batched``) that stops at the output of every
``nn.Linear``/``nn.Conv``; there the per-sample gradient g ãᵀ has squared norm ‖g‖²‖ã‖² (no weight
sharing) or ⟨g gᵀ, ã ãᵀ⟩ summed over shared positions, so no per-sample gradient is formed. Any
other parameter (LayerNorm, embeddings, custom modules) falls back to torch.func per-sample
gradients. ``scope="last_layer"`` keeps only the final Linear layer, where the score has the closed
form Σ_y p_y ‖p − e_y‖² (‖h‖² + 1) = (1 − ‖p‖²)(‖h‖² + 1) with h the layer input.
"""

from __future__ import annotations

import torch
from torch import nn

from ..engine.functional import persample_grads
from ..engine.collect import output_grads
from ..engine.taps import OutputLayerTap
from ..engine.units import capture_forward, make_plan, settle, unit_activations, unit_output_grads
from ..params import select_params
from ..errors import FisherkitError, NonFiniteError
from ..likelihoods import Likelihood, get_likelihood
from ._checks import as_pool, check_outputs, eval_mode, pool_arg

SCOPES = ("all", "last_layer")


def _likelihood(likelihood) -> Likelihood:
    return get_likelihood(likelihood)


def label_directions(lik: Likelihood, f: torch.Tensor, top_classes: int | None = None):
    """Output directions V ``[K, B, C]`` and weights w ``[K, B]`` with EGL = Σ_k w_k ‖Jᵀ V_k‖².

    Categorical: V_k = p − e_{y_k}, w_k = p_{y_k} for every class y_k (or the ``top_classes`` most
    probable ones, an approximation that drops the least likely labels). Other likelihoods: the
    columns of the output-Fisher square root S (Λ = S Sᵀ) with unit weights, which gives the exact
    expectation E_y‖Jᵀ r_y‖² = tr(Jᵀ Λ J) without enumerating labels.
    """
    f = f.detach()
    c = f.shape[-1]
    if lik.name == "categorical":
        p = torch.softmax(f, dim=-1)
        if top_classes is None or top_classes >= c:
            idx = torch.arange(c, device=f.device).expand(f.shape[0], c)
        else:
            idx = p.topk(top_classes, dim=-1).indices
        eye = torch.nn.functional.one_hot(idx, c).to(p.dtype)  # [B, K, C]
        v = (p.unsqueeze(1) - eye).transpose(0, 1)  # [K, B, C]
        w = p.gather(1, idx).transpose(0, 1)  # [K, B]
        return v.contiguous(), w.contiguous()
    if top_classes is not None:
        raise FisherkitError(f"top_classes applies to the categorical likelihood only, not {lik.name!r}")
    s = lik.sqrt_fisher(f)  # [B, C, K]
    v = s.permute(2, 0, 1).contiguous()
    return v, torch.ones(v.shape[:2], dtype=f.dtype, device=f.device)


def _unit_sqnorm(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """‖Σ_t g_t ã_tᵀ‖²_F for every direction and sample: a ``[B, T, I]``, g ``[K, B, T, O]`` → ``[K, B]``."""
    t, i, o = a.shape[1], a.shape[2], g.shape[-1]
    if t == 1:  # one fused reduction each, no squared temporaries
        return torch.linalg.vector_norm(g.squeeze(2), dim=-1).square() * torch.linalg.vector_norm(a.squeeze(1), dim=-1).square()
    if t * t * (i + o) <= t * i * o:  # Gram route: ⟨g gᵀ, ã ãᵀ⟩ over positions
        aa = a @ a.transpose(1, 2)  # [B, T, T]
        gg = g @ g.transpose(2, 3)  # [K, B, T, T]
        return (gg * aa).sum((-1, -2))
    return torch.einsum("kbto,bti->kboi", g, a).pow(2).sum((-1, -2))


def _default_batch(n: int, c: int, width: int, itemsize: int, budget: float = 2**24) -> int:
    # ~16 MiB of output gradients per layer: large enough for efficient matmuls, small enough
    # that the memory-bound steps (activation backward, norms) run out of cache
    per_sample = max(1, c * width * itemsize)
    return int(max(1, min(n, budget // per_sample)))


def _widest(model: nn.Module) -> int:
    w = 1
    for m in model.modules():
        if isinstance(m, nn.Linear):
            w = max(w, m.in_features, m.out_features)
    return w


def _scores_all(model, X, lik, top_classes, batch_size, params):
    chosen = select_params(model, params)
    plan = settle(model, make_plan(model, chosen, elementwise=True), X[:batch_size])
    units, nh = plan.hook_units, len(plan.hook_units)
    pieces = []
    for s in range(0, X.shape[0], batch_size):
        x = X[s : s + batch_size]
        out, inputs, zs = capture_forward(model, x, plan)
        check_outputs(out, lik.name)
        v, w = label_directions(lik, out, top_classes)
        score = out.new_zeros(x.shape[0])
        if zs:
            gzs = output_grads(out, zs, v)
            for u, inp, gz in zip(units, inputs[:nh], gzs[:nh]):
                if gz is None:
                    continue
                a = unit_activations(u, inp)
                sq = _unit_sqnorm(a, unit_output_grads(u, gz))
                score += (w * sq).sum(0)
            per: dict = {}  # LayerNorm, Embedding, ...: closed form; a tied weight's uses summed before squaring
            for u, inp, gz in zip(plan.elem_units, inputs[nh:], gzs[nh:]):
                if gz is None:
                    continue
                for n, g in u.handler.persample(u.module, inp, gz, u.names).items():
                    per[n] = per[n] + g if n in per else g
            for g in per.values():
                score += (w * g.reshape(g.shape[0], g.shape[1], -1).pow(2).sum(-1)).sum(0)
        if plan.func_names:
            grads = persample_grads(model, plan.func_names, x, v)
            for g in grads.values():
                score += (w * g.reshape(g.shape[0], g.shape[1], -1).pow(2).sum(-1)).sum(0)
        pieces.append(score.detach())
    return torch.cat(pieces)


@torch.no_grad()
def last_layer_features(model: nn.Module, X, batch_size: int = 4096, likelihood: str = "categorical"):
    """Inputs h ``[N, H]`` of the final ``nn.Linear``, the logits f ``[N, C]``, and whether it has a bias."""
    X = as_pool(X, model)
    hs, fs, has_bias = [], [], False
    with eval_mode(model):
        for s in range(0, X.shape[0], batch_size):
            with OutputLayerTap(model) as tap:
                out = model(X[s : s + batch_size])
            check_outputs(out, likelihood)
            m, h = tap.head(out)
            if h.dim() != 2:
                raise FisherkitError(f"the final Linear layer sees inputs of shape {tuple(h.shape)}; need [batch, features]")
            has_bias = m.bias is not None and m.bias.requires_grad
            hs.append(h)
            fs.append(out.detach())
    return torch.cat(hs), torch.cat(fs), has_bias


def _scores_last_layer(model, X, lik, top_classes, batch_size):
    h, f, has_bias = last_layer_features(model, X, batch_size, lik.name)
    v, w = label_directions(lik, f, top_classes)
    hn = h.pow(2).sum(-1) + (1.0 if has_bias else 0.0)
    return (w * v.pow(2).sum(-1)).sum(0) * hn


def egl_scores(
    model: nn.Module,
    data=None,
    likelihood: str | Likelihood = "categorical",
    scope: str = "all",
    top_classes: int | None = None,
    batch_size: int | None = None,
    params=None,
    X_pool=None,
) -> torch.Tensor:
    """Expected gradient length EGL(x) = Σ_y p(y|x) ‖∇θ ℓ(x, y)‖²₂ for every pool point, shape ``[N]``.

    ``scope="all"``: every trainable parameter (or ``params=``), exact expectation over the C labels,
    computed from C batched backward directions per batch. ``scope="last_layer"``: the final
    ``nn.Linear`` only, closed form (1 − ‖p‖²)(‖h‖² + 1) for softmax outputs. ``top_classes=K`` sums
    over the K most probable labels only (cheaper for many classes; a lower bound). The model runs in
    eval mode (dropout off) and its modes are restored afterwards.

    Example::

        scores = fk.active.egl_scores(model, X_pool)          # [N] for a pool X_pool [N, ...]
        best = scores.topk(10).indices
    """
    if scope not in SCOPES:
        raise FisherkitError(f"unknown scope {scope!r}; use one of {SCOPES}")
    lik = _likelihood(likelihood)
    X = as_pool(pool_arg(data, X_pool), model)
    if top_classes is not None:
        if isinstance(top_classes, bool) or not isinstance(top_classes, int) or top_classes < 1:
            raise FisherkitError(f"top_classes must be a positive integer or None; got {top_classes!r}")
    with eval_mode(model):
        if batch_size is None:
            with torch.no_grad():
                c = check_outputs(model(X[:1]), lik.name).shape[-1]
            batch_size = _default_batch(X.shape[0], top_classes or c, _widest(model), X.element_size())
        if scope == "last_layer":
            scores = _scores_last_layer(model, X, lik, top_classes, batch_size)
        else:
            scores = _scores_all(model, X, lik, top_classes, batch_size, params)
    if not torch.isfinite(scores).all():
        raise NonFiniteError("EGL scores are not finite; check the model's outputs and parameters")
    return scores
