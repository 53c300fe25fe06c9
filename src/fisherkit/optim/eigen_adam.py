"""``KFACEigenAdam``: Adam's second moment in the KFAC eigenbasis (SOAP-style, Vyas et al. 2024).

Same stack as ``NaturalGradient`` (the engine's recorder → the KFAC accumulator → moving average →
eigendecompositions every ``inv_every`` steps); only the scaling in the eigenbasis differs. For a
Kronecker-factored layer with factor eigenbases Q_A, Q_G and gradient matrix G = [∇W | ∇b]:

    m = Q_Gᵀ G Q_A                                  (the gradient in the eigenbasis)
    v ← β₂ v + (1 − β₂) m²,  v̂ = v / (1 − β₂ᵗ)      (Adam's second moment there, per entry)
    n = Q_G (m / (√v̂ + ε)) Q_Aᵀ

EKFAC rescales the eigenbasis by the Fisher's own scalings (sampled labels, refitted every
``update_every`` steps); this rescales it by the observed gradients' second moment every step, as
SOAP does with Shampoo's basis. v is kept across basis refreshes (as SOAP keeps its second moment).
Parameters KFAC does not factor (embeddings, LayerNorms, ...) get plain Adam (g / (√v̂ + ε)).
Momentum, weight decay, grafting, schedules, trust region and checkpoints are ``NaturalGradient``'s:

    opt = fk.optim.KFACEigenAdam(model, lr=3e-4, momentum=0.9, update_every=10, inv_every=20)
"""

from __future__ import annotations

import torch

from ..choices import check_fraction, check_positive
from ..errors import FisherkitError
from .natural_gradient import NaturalGradient


class KFACEigenAdam(NaturalGradient):
    """``NaturalGradient(structure="kfac")`` with Adam's second moment as the eigenbasis scaling.

    Args (beyond ``NaturalGradient``'s; ``structure`` is always ``"kfac"``; ``damping`` does not enter
    the step — ε plays its role — and ``graft`` would only rescale Adam's length to Adam's):
        beta2: decay of the second moment in the eigenbasis, in [0, 1).
        eps: ε added to √v̂.
    """

    def __init__(self, model, lr=3e-4, beta2=0.999, eps=1e-8, momentum=0.9, update_every=10, inv_every=None, **kw):
        if kw.get("structure", "kfac") != "kfac":
            raise FisherkitError("KFACEigenAdam works in the KFAC eigenbasis: structure must be 'kfac'")
        kw.pop("structure", None)
        check_fraction("beta2", beta2)
        check_positive("eps", eps)
        super().__init__(model, lr=lr, structure="kfac", momentum=momentum, update_every=update_every,
                         inv_every=inv_every, **kw)
        self.beta2, self.eps = beta2, eps

    def _moment(self, name, like):
        st = self.state[self.pre.params[name]]
        if "eigen_v" not in st or st["eigen_v"].shape != like.shape:
            st["eigen_v"] = torch.zeros_like(like)
        return st["eigen_v"]

    def _precondition(self, grads: dict) -> dict:
        pre = self.pre
        if pre.parallel is not None:
            grads = pre.parallel.average_gradients(grads)
        if pre.steps % pre.update_every == 0:
            pre._ingest()
        if pre.steps % pre.inv_every == 0 or pre.curvature is None:
            pre._refresh()
        pre.steps += 1
        b2, eps, t = self.beta2, self.eps, pre.steps
        out = {}
        for block in pre.curvature.blocks:
            if block.kind == "kron":
                (_, qa), (_, qg) = block.eig_factors()
                m = qg.T @ block.to_matrix(grads) @ qa
                v = self._moment(block.names[0], m)
                v.mul_(b2).addcmul_(m, m, value=1 - b2)
                flat = block.from_matrix(qg @ (m / ((v / (1 - b2**t)).sqrt() + eps)) @ qa.T)
                out.update({n: f.reshape(grads[n].shape) for n, f in flat.items()})
            else:
                for n in block.names:
                    v = self._moment(n, grads[n])
                    v.mul_(b2).addcmul_(grads[n], grads[n], value=1 - b2)
                    out[n] = grads[n] / ((v / (1 - b2**t)).sqrt() + eps)
        missing = [n for n in grads if n not in out]
        if missing:
            raise FisherkitError(f"KFACEigenAdam: no curvature block for {missing[:3]}")
        return out
