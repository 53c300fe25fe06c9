"""The optimizer's recorder on models called with keyword inputs and returning dicts / HF outputs:
its batch curvature equals fk.fisher's on the same batch (the one stack's reference)."""

import sys
from pathlib import Path

import torch

import fisherkit as fk
from fisherkit.optim import Preconditioner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))
from test_sequence_models import _batch, _model  # noqa: E402


def _step(pre, model, batch):
    model.zero_grad()
    out = model(**batch)  # labels go in as a keyword, as HF training loops do
    logits = out["logits"][:, :-1]
    y = batch["labels"][:, 1:]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=-100)
    loss.backward()
    pre.step()


class WithLabels(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask=None, labels=None):
        return self.inner(input_ids, attention_mask)


def test_recorded_kfac_and_diag_equal_the_core_fisher_with_shift_and_ignore_index():
    for structure in ("kfac", "diag"):
        model = WithLabels(_model())
        batch = _batch()
        pre = Preconditioner(model, structure=structure, kind="exact", ema=0.0, shift_labels=True)
        _step(pre, model, batch)
        F = fk.fisher(model, batch, kind="exact", structure=structure, shift_labels=True)
        if structure == "kfac":
            for w, (A, G) in F.factors().items():
                A2, G2 = pre.curvature.factors()[w]
                torch.testing.assert_close(A2, A, rtol=1e-10, atol=1e-13)
                torch.testing.assert_close(G2, G, rtol=1e-10, atol=1e-13)
        else:
            torch.testing.assert_close(pre.curvature.diag(), F.diag(), rtol=1e-10, atol=1e-13)
        pre.remove()
