"""Batch-mode strategies built on last-layer gradients: BADGE (Ash et al. 2020), BAIT (Ash et al. 2021).

Both use the final ``nn.Linear`` (logits f = W h + b, h̃ = [h, 1]). For a label y the gradient of
the loss with respect to W is the outer product (p − e_y) h̃ᵀ, and the one-point Fisher of W is
Λ ⊗ h̃h̃ᵀ with Λ = diag(p) − p pᵀ = S Sᵀ. Nothing of size N × C·H is ever formed: inner products of
Kronecker vectors factor, ⟨r ⊗ h, r' ⊗ h'⟩ = ⟨r, r'⟩⟨h, h'⟩.

* ``BADGE``: k-means++ seeding on the gradient embeddings g_x = (p − e_ŷ) ⊗ h̃ at the predicted
  label ŷ, so picks are both uncertain (large ‖g‖) and different from each other.
* ``BAIT``: greedily pick the batch B that minimises tr((λI + F_L + Σ_{x∈B} V_x)⁻¹ F) — the
  expected excess risk of the last layer to second order — where F is the Fisher of all points,
  F_L that of the labelled ones and V_x = (S_x ⊗ h̃_x)(S_x ⊗ h̃_x)ᵀ; forward greedy to 2k points,
  then backward greedy removal to k, each step a rank-C Woodbury update.
"""

from __future__ import annotations

import torch

from ..choices import as_generator
from ..errors import FisherkitError
from .scores import last_layer_features
from .strategies import Strategy


def _features(model, X):
    h, f, has_bias = last_layer_features(model, X)
    h = h.double()
    if has_bias:
        h = torch.cat([h, h.new_ones(h.shape[0], 1)], 1)
    p = torch.softmax(f.double(), -1)
    return h, p


class BADGE(Strategy):
    """Batch Active learning by Diverse Gradient Embeddings: k-means++ seeds in gradient space.

    The first pick is the largest embedding ‖g_x‖ = ‖p − e_ŷ‖‖h̃‖; each next pick is drawn with
    probability ∝ D(x)², the squared distance to the nearest pick so far, where
    ‖g_i − g_j‖² = ‖g_i‖² + ‖g_j‖² − 2⟨r_i, r_j⟩⟨h̃_i, h̃_j⟩. ``scores_`` holds ‖g_x‖².
    """

    name = "badge"

    def __init__(self, generator=None, seed=None):
        self.generator, self.seed = as_generator(generator, seed, owner="BADGE")

    def score(self, model, X, X_labeled=None):
        h, p = _features(model, X)
        r = p - torch.nn.functional.one_hot(p.argmax(-1), p.shape[-1]).double()
        self._r, self._h = r, h
        return r.pow(2).sum(-1) * h.pow(2).sum(-1)

    def pick(self, model, X, k, X_labeled):
        r, h, sq = self._r, self._h, self.scores_
        chosen = [int(sq.argmax())]
        d2 = (sq + sq[chosen[0]] - 2 * (r @ r[chosen[0]]) * (h @ h[chosen[0]])).clamp_min(0)
        d2[chosen[0]] = 0
        for _ in range(1, k):
            if d2.sum() <= 0:  # all remaining points coincide with a pick: fill by score
                rest = [i for i in torch.argsort(sq, descending=True).tolist() if i not in set(chosen)]
                chosen += rest[: k - len(chosen)]
                break
            i = int(torch.multinomial(d2 / d2.sum(), 1, generator=self.generator))
            chosen.append(i)
            d2 = torch.minimum(d2, (sq + sq[i] - 2 * (r @ r[i]) * (h @ h[i])).clamp_min(0))
            d2[i] = 0
        del self._r, self._h
        return torch.tensor(chosen, dtype=torch.long)

    def __repr__(self):
        return f"BADGE(generator={self.seed})"


def _kron_quadratic(M: torch.Tensor, h: torch.Tensor, c: int, chunk: int = 256) -> torch.Tensor:
    """Q_x[a, b] = Σ_{i,j} h_i h_j M[(a,i), (b,j)] for every row h of ``h`` → ``[N, C, C]``."""
    n, d = h.shape
    M4 = M.reshape(c, d, c, d).permute(1, 3, 0, 2).reshape(d * d, c * c)
    out = []
    for s in range(0, n, chunk):
        hh = (h[s : s + chunk].unsqueeze(2) * h[s : s + chunk].unsqueeze(1)).reshape(-1, d * d)
        out.append((hh @ M4).reshape(-1, c, c))
    return torch.cat(out)


def _sqrt_fisher(p: torch.Tensor) -> torch.Tensor:
    sp = p.sqrt()
    return torch.diag_embed(sp) - p.unsqueeze(-1) * sp.unsqueeze(-2)  # [N, C, C]: Λ = S Sᵀ


def _kron_fisher(S: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Σ_x (S_x S_xᵀ) ⊗ h_x h_xᵀ as a dense ``[C·H, C·H]`` matrix ((class, feature) order)."""
    c, d = S.shape[1], h.shape[1]
    lam = S @ S.transpose(1, 2)
    return torch.einsum("nab,ni,nj->aibj", lam, h, h).reshape(c * d, c * d)


class BAIT(Strategy):
    """Batch active learning via information metrics (Ash et al. 2021, "Gone Fishing").

    Chooses B (|B| = k) to minimise tr((λI + n_L/(n_L+k)·F_L + k/(n_L+k)·mean_{x∈B} V_x)⁻¹ F),
    F the mean last-layer Fisher over pool and labelled points, F_L the labelled mean, greedily:
    each forward step adds the x with the largest drop tr((I + A_x)⁻¹ B_x), A_x = U_xᵀ M⁻¹ U_x,
    B_x = U_xᵀ M⁻¹ F M⁻¹ U_x, U_x = S_x ⊗ h̃_x (scaled); ``oversample``·k forward steps, then
    backward steps remove the point whose removal raises the trace least. ``scores_`` holds the
    first forward step's trace drops.
    """

    name = "bait"

    def __init__(self, lam: float = 1.0, oversample: float = 2.0):
        if lam <= 0:
            raise FisherkitError(f"BAIT needs lam > 0 (ridge on the Fisher); got {lam}")
        if oversample < 1:
            raise FisherkitError(f"BAIT oversample must be at least 1; got {oversample}")
        self.lam, self.oversample = lam, oversample

    def score(self, model, X, X_labeled=None):
        return torch.zeros(X.shape[0], dtype=torch.float64)  # filled in by pick

    def pick(self, model, X, k, X_labeled):
        h, p = _features(model, X)
        n, c, d = h.shape[0], p.shape[1], h.shape[1]
        S = _sqrt_fisher(p)
        F = _kron_fisher(S, h)
        n_l = 0
        FL = torch.zeros_like(F)
        if X_labeled is not None:
            hl, pl = _features(model, X_labeled)
            Sl = _sqrt_fisher(pl)
            n_l = hl.shape[0]
            FL = _kron_fisher(Sl, hl) / n_l
            F = F + _kron_fisher(Sl, hl)
        F = F / (n + n_l)
        h = h * (k / (n_l + k)) ** 0.5  # U_x = (S_x ⊗ h̃_x) √(k/(n_L+k))
        Minv = torch.linalg.inv(self.lam * torch.eye(c * d, dtype=F.dtype) + FL * n_l / (n_l + k))
        # per candidate A_x = U_xᵀ M⁻¹ U_x and B_x = U_xᵀ M⁻¹ F M⁻¹ U_x, formed once with the
        # Kronecker structure (O(N C² H²)), then kept up to date through each rank-C Woodbury step
        # M⁻¹ ← M⁻¹ − s w wᵀ: A ← A − s z zᵀ, B ← B − s(z yᵀ + y zᵀ) + z (wᵀ F w) zᵀ with
        # z = U_xᵀ w, y = U_xᵀ M⁻¹ F w — O(N C² (C + H)) per step.
        St = S.transpose(1, 2)
        A = St @ _kron_quadratic(Minv, h, c) @ S
        B = St @ _kron_quadratic(Minv @ F @ Minv, h, c) @ S
        m = min(n, max(k, int(round(self.oversample * k))))
        chosen: list[int] = []
        taken = torch.zeros(n, dtype=torch.bool)
        I = torch.eye(c, dtype=F.dtype)

        def project(V):  # U_xᵀ V for all x: V [C·H, J] → [N, C, J]
            T = torch.einsum("jch,nh->ncj", V.T.reshape(-1, c, d), h)
            return St @ T

        def update(i, sign):
            nonlocal Minv, A, B
            U = torch.einsum("ab,i->aib", S[i], h[i]).reshape(c * d, c)  # column b: S[:, b] ⊗ h
            MU = Minv @ U
            w = MU @ torch.linalg.cholesky(torch.linalg.inv(I + sign * (U.T @ MU)))
            Fw = F @ w
            z, y = project(w), project(Minv @ Fw)
            zy = z @ y.transpose(1, 2)
            A = A - sign * z @ z.transpose(1, 2)
            B = B - sign * (zy + zy.transpose(1, 2)) + z @ (w.T @ Fw) @ z.transpose(1, 2)
            Minv = Minv - sign * w @ w.T

        for step in range(m):
            drop = torch.linalg.solve(I + A, B).diagonal(dim1=1, dim2=2).sum(-1)  # trace drop if added
            if step == 0:
                self.scores_ = drop.detach().clone()
            drop[taken] = -float("inf")
            i = int(drop.argmax())
            chosen.append(i)
            taken[i] = True
            update(i, +1.0)
        while len(chosen) > k:
            idx = torch.tensor(chosen)
            rise = torch.linalg.solve(I - A[idx], B[idx]).diagonal(dim1=1, dim2=2).sum(-1)  # trace rise if removed
            j = int(rise.argmin())
            update(chosen[j], -1.0)
            chosen.pop(j)
        return torch.tensor(chosen, dtype=torch.long)

    def __repr__(self):
        return f"BAIT(lam={self.lam}, oversample={self.oversample})"
