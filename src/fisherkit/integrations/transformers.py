"""HuggingFace ``Trainer`` callbacks: EWC while fine-tuning, and natural-gradient preconditioning.

Both act in ``on_pre_optimizer_step`` — after the backward passes of an optimizer step (and after the
Trainer's gradient clipping), before ``optimizer.step()``:

* ``EWCCallback(ewc)`` adds the gradient of the EWC penalty, ∇θ [λ/2 Σ_t w_t (θ − θ*_t)ᵀ F_t (θ − θ*_t)]
  = λ Σ_t w_t F_t (θ − θ*_t), to ``p.grad``: the Trainer then minimises its own loss + the penalty
  (the penalty counted once per optimizer step, whatever the gradient accumulation).
* ``NaturalGradientCallback(pre)`` replaces ``p.grad`` by (F̂ + λI)⁻¹ ∇L with a
  ``fisherkit.optim.Preconditioner`` (its recorder sees the Trainer's own forward passes, keyword
  inputs and ``labels`` included); the Trainer's optimizer (e.g. SGD) then steps along it.

Example::

    ewc = fk.continual.EWC(model, lam=1e3, fisher_options={"shift_labels": True})
    ewc.consolidate(old_task_batches)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=new_task,
                                   callbacks=[EWCCallback(ewc)])
    trainer.train()

A plain PyTorch loop needs no callback: ``loss = loss + ewc.penalty()``, or ``pre.step()`` between
``loss.backward()`` and ``optimizer.step()``.
"""

from __future__ import annotations

import torch

from ..errors import FisherkitError

try:
    from transformers import TrainerCallback
except ImportError as e:  # pragma: no cover - the [hf] extra is missing
    raise ImportError("fisherkit.integrations.transformers needs the 'transformers' package "
                      "(pip install 'fisherkit[hf]' with a constraint file pinning torch)") from e


class EWCCallback(TrainerCallback):
    """Adds λ Σ_t w_t F_t (θ − θ*_t) (the EWC penalty's gradient) to the gradients before each step."""

    def __init__(self, ewc):
        if not hasattr(ewc, "penalty") or not hasattr(ewc, "model"):
            raise FisherkitError(f"EWCCallback needs a fisherkit.continual.EWC; got {type(ewc).__name__}")
        self.ewc = ewc
        self.last_penalty = None

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        params = [p for p in self.ewc.model.parameters() if p.requires_grad]
        with torch.enable_grad():
            penalty = self.ewc.penalty()
        self.last_penalty = float(penalty.detach())
        if not penalty.requires_grad:  # nothing consolidated yet, or λ = 0
            return control
        grads = torch.autograd.grad(penalty, params, allow_unused=True)
        with torch.no_grad():
            for p, g in zip(params, grads):
                if g is None:
                    continue
                if p.grad is None:
                    p.grad = g.detach().clone()
                else:
                    p.grad.add_(g)
        return control


class NaturalGradientCallback(TrainerCallback):
    """Preconditions the gradients with a ``fisherkit.optim.Preconditioner`` before each optimizer step."""

    def __init__(self, preconditioner):
        if not hasattr(preconditioner, "compute") or not hasattr(preconditioner, "grads"):
            raise FisherkitError("NaturalGradientCallback needs a fisherkit.optim.Preconditioner; "
                                 f"got {type(preconditioner).__name__}")
        self.pre = preconditioner
        self.last_natural = None

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        with torch.no_grad():
            nat = self.pre.compute(self.pre.grads())
            for n, p in self.pre.params.items():
                if p.grad is None:
                    p.grad = nat[n].clone()
                else:
                    p.grad.copy_(nat[n])
        self.last_natural = {n: t.detach().clone() for n, t in nat.items()}
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self.pre.remove()  # the hooks come off the model with the end of training
        return control
