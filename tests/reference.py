"""Independent brute-force references in float64: per-sample Jacobians with torch.func.jacrev.

F_exact = 1/N Σₙ Jₙᵀ Λₙ Jₙ,  F_emp = 1/N Σₙ gₙ gₙᵀ,  H = ∇² of the nll, all on the flat vector of
``requires_grad`` parameters in ``named_parameters`` order. Nothing here uses fisherkit's engine.
"""

from __future__ import annotations

import torch
from torch.func import functional_call, hessian, jacrev


def flat_params(model):
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    theta = torch.cat([dict(model.named_parameters())[n].detach().reshape(-1) for n in names])
    return names, theta


def _unflat(model, names, theta):
    params = dict(model.named_parameters())
    out, i = {}, 0
    for n in names:
        k = params[n].numel()
        out[n] = theta[i : i + k].reshape(params[n].shape)
        i += k
    full = {n: p.detach() for n, p in params.items()}
    full.update(out)
    return full


def output_fn(model, names, x):
    buffers = dict(model.named_buffers())
    return lambda theta: functional_call(model, (_unflat(model, names, theta), buffers), (x,))


def output_fisher(likelihood: str, f: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Λ per output position [*E, C, C], written from the textbook formulas."""
    if likelihood == "categorical":
        p = torch.softmax(f, -1)
        return torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)
    if likelihood == "gaussian":
        return torch.eye(f.shape[-1], dtype=f.dtype).expand(*f.shape, f.shape[-1]) / sigma**2
    if likelihood == "bernoulli":
        p = torch.sigmoid(f)
        return torch.diag_embed(p * (1 - p))
    raise ValueError(likelihood)


def nll(likelihood: str, f, y, sigma=1.0):
    if likelihood == "categorical":
        return -torch.log_softmax(f, -1).gather(-1, y.unsqueeze(-1)).sum()
    if likelihood == "gaussian":
        return 0.5 * ((f - y) ** 2).sum() / sigma**2
    if likelihood == "bernoulli":
        return torch.nn.functional.binary_cross_entropy_with_logits(f, y, reduction="sum")
    raise ValueError(likelihood)


def brute_fisher(model, X, y=None, likelihood="categorical", kind="exact", sigma=1.0):
    """Dense P × P Fisher by per-sample Jacobians (one sample at a time)."""
    names, theta = flat_params(model)
    F = torch.zeros(theta.numel(), theta.numel(), dtype=theta.dtype)
    for n in range(X.shape[0]):
        f_of = output_fn(model, names, X[n : n + 1])
        if kind == "exact":
            J = jacrev(f_of)(theta)  # [1, *E, C, P]
            f = f_of(theta)
            lam = output_fisher(likelihood, f[0], sigma)  # [*E, C, C]
            c = f.shape[-1]
            Jf = J.reshape(-1, c, theta.numel())
            lam = lam.reshape(-1, c, c)
            F += torch.einsum("eap,eaq->pq", Jf, lam @ Jf)  # Σ_e J_eᵀ Λ_e J_e
        else:
            g = torch.func.grad(lambda t: nll(likelihood, f_of(t), y[n : n + 1], sigma))(theta)
            F += torch.outer(g, g)
    return F / X.shape[0]


def brute_expected_hessian(model, X, likelihood="categorical", n_samples=None, generator=None):
    """−E_y[∇² log p] = E_y[∇² nll] averaged over data, by exact enumeration over classes (categorical)."""
    names, theta = flat_params(model)
    H = torch.zeros(theta.numel(), theta.numel(), dtype=theta.dtype)
    for n in range(X.shape[0]):
        f_of = output_fn(model, names, X[n : n + 1])
        p = torch.softmax(f_of(theta), -1)[0]
        for c in range(p.shape[-1]):
            yc = torch.tensor([c])
            H += p[c] * hessian(lambda t: nll("categorical", f_of(t), yc))(theta)
    return H / X.shape[0]


# ---- per-layer references for KFAC / EKFAC (hand-written with autograd; no fisherkit code) ----------


def _layer_inputs(module, x_in: torch.Tensor) -> torch.Tensor:
    """ã for one sample: [T, I(+1)] layer inputs at each of the T shared positions, a 1 appended for the bias.

    Linear on [1, *, d]: the T = prod(*) rows; Conv1d/Conv2d: the unfolded input patches (C_in, k...) order.
    """
    from torch import nn

    if isinstance(module, nn.Linear):
        a = x_in.reshape(-1, x_in.shape[-1])
    elif isinstance(module, nn.Conv2d):
        a = torch.nn.functional.unfold(x_in, module.kernel_size, dilation=module.dilation, padding=module.padding,
                                       stride=module.stride)[0].T  # [T, C_in·kh·kw]
    elif isinstance(module, nn.Conv1d):
        x = torch.nn.functional.pad(x_in, (module.padding[0], module.padding[0]))
        k, s, d = module.kernel_size[0], module.stride[0], module.dilation[0]
        t = (x.shape[-1] - d * (k - 1) - 1) // s + 1
        a = torch.stack([x[0, :, i * s : i * s + d * (k - 1) + 1 : d].reshape(-1) for i in range(t)])
    else:
        raise TypeError(type(module))
    if module.bias is not None:
        a = torch.cat([a, a.new_ones(a.shape[0], 1)], 1)
    return a


def brute_kfac(model, X, modules: dict, likelihood="categorical", sigma=1.0):
    """KFAC-expand factors per layer by per-sample autograd loops, exact kind:

    A = (1/N) Σₙ (1/T) Σ_t ãₙ,t ãₙ,tᵀ and G = (1/N) Σₙ Σ_t Σ_e Jₙ,e,tᵀ Λₙ,e Jₙ,e,t, with Jₙ,e,t = ∂f_e/∂z_t
    [C, O] the Jacobian of output position e w.r.t. the layer's pre-activation z at position t
    (Σ_d g gᵀ over the columns s_d of any square root of Λ). ``modules``: name → module.
    Returns name → (A, G) in the [W | b] (row-major) coordinates.
    """
    out = {k: [0.0, 0.0] for k in modules}
    for n in range(X.shape[0]):
        store = {}

        def hook(name):
            def h(mod, inp, outp):
                store[name] = (inp[0].detach(), outp)
            return h

        handles = [m.register_forward_hook(hook(k)) for k, m in modules.items()]
        try:
            f = model(X[n : n + 1])
        finally:
            for h in handles:
                h.remove()
        c = f.shape[-1]
        lam = output_fisher(likelihood, f.detach()[0], sigma).reshape(-1, c, c)  # [E, C, C]
        flat = f[0].reshape(-1, c)
        names = list(modules)
        zs = [store[k][1] for k in names]
        # J[e, c] rows: gradients of each output entry w.r.t. every layer's z
        rows = [[torch.autograd.grad(flat[e, j], zs, retain_graph=True, allow_unused=True) for j in range(c)]
                for e in range(flat.shape[0])]
        for li, k in enumerate(names):
            m = modules[k]
            a = _layer_inputs(m, store[k][0])  # [T, I]
            out[k][0] = out[k][0] + a.T @ a / a.shape[0]
            z = zs[li]
            conv = not isinstance(m, torch.nn.Linear)
            o = m.out_channels if conv else m.out_features
            G = torch.zeros(o, o, dtype=a.dtype)
            for e in range(flat.shape[0]):
                J = torch.stack([r[li] if r[li] is not None else torch.zeros_like(z) for r in rows[e]])[:, 0]
                if conv:
                    J = J.reshape(c, J.shape[1], -1).permute(2, 0, 1)  # [T, C, O]
                else:
                    J = J.reshape(c, -1, J.shape[-1]).permute(1, 0, 2)  # [T, C, O]
                G = G + torch.einsum("tco,cd,tdq->oq", J, lam[e], J)
            out[k][1] = out[k][1] + G
    return {k: (A / X.shape[0], G / X.shape[0]) for k, (A, G) in out.items()}


def layer_index(model, module_name: str) -> torch.Tensor:
    """Flat-vector positions of a layer's [W | b] entries in row-major order of the combined matrix."""
    offs, i = {}, 0
    for n, p in model.named_parameters():
        if p.requires_grad:
            offs[n] = (i, p)
            i += p.numel()
    w0, w = offs[module_name + ".weight"]
    o = w.shape[0]
    cols = w.numel() // o
    idx = w0 + torch.arange(w.numel()).reshape(o, cols)
    if module_name + ".bias" in offs:
        b0, _ = offs[module_name + ".bias"]
        idx = torch.cat([idx, (b0 + torch.arange(o))[:, None]], 1)
    return idx.reshape(-1)


def kfac_dense(model, factors: dict) -> torch.Tensor:
    """The P × P block-diagonal matrix with blocks G ⊗ A (row-major [W | b]) at each layer's positions."""
    p = sum(q.numel() for q in model.parameters() if q.requires_grad)
    dtype = next(model.parameters()).dtype
    M = torch.zeros(p, p, dtype=dtype)
    for name, (A, G) in factors.items():
        idx = layer_index(model, name)
        M[idx[:, None], idx[None, :]] = torch.kron(G, A)
    return M


def ekfac_dense(model, factors: dict, F: torch.Tensor) -> torch.Tensor:
    """EKFAC from its definition: per layer Q = Q_G ⊗ Q_A (eigenvectors of the brute-force factors) and
    S = diag(Qᵀ F_block Q) with F_block the layer's block of the brute-force Fisher ``F``; Q diag(S) Qᵀ."""
    M = torch.zeros_like(F)
    for name, (A, G) in factors.items():
        idx = layer_index(model, name)
        Q = torch.kron(torch.linalg.eigh(G)[1], torch.linalg.eigh(A)[1])
        S = (Q.T @ F[idx[:, None], idx[None, :]] @ Q).diagonal()
        M[idx[:, None], idx[None, :]] = Q @ torch.diag(S) @ Q.T
    return M
