"""HuggingFace Trainer callbacks: the EWC gradient and the natural-gradient step, checked by value."""

import sys
from pathlib import Path

import pytest
import torch

import fisherkit as fk

transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_sequence_models import _batch, _model  # noqa: E402

from fisherkit.integrations.transformers import EWCCallback, NaturalGradientCallback  # noqa: E402


class LM(torch.nn.Module):
    """TinyLM with the HF calling convention: labels in, a loss out (causal shift inside)."""

    def __init__(self):
        super().__init__()
        self.inner = _model()

    def forward(self, input_ids, attention_mask=None, labels=None):
        out = self.inner(input_ids, attention_mask)
        logits = out["logits"]
        res = {"logits": logits}
        if labels is not None:
            res["loss"] = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)
        return res


def test_ewc_callback_adds_exactly_lambda_F_d():
    model = LM()
    batch = _batch()
    ewc = fk.continual.EWC(model, lam=5.0, fisher_options={"shift_labels": True})
    ewc.consolidate(batch)
    F = fk.fisher(model, batch, structure="diag", shift_labels=True)
    anchor = F.flatten(dict(model.named_parameters())).detach().clone()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
            p.grad = torch.ones_like(p)
    cb = EWCCallback(ewc)
    cb.on_pre_optimizer_step(None, None, None)
    d = F.flatten(dict(model.named_parameters())).detach() - anchor
    got = F.flatten({n: p.grad for n, p in model.named_parameters()})
    torch.testing.assert_close(got, 1.0 + 5.0 * F.diag() * d, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.tensor(cb.last_penalty, dtype=torch.float64),
                               0.5 * 5.0 * (F.diag() * d * d).sum(), rtol=1e-10, atol=1e-14)


def test_trainer_steps_along_the_natural_gradient(tmp_path):
    """Two Trainer steps with SGD: each update is −lr · (F̂ + λI)⁻¹ g, the preconditioner's output."""
    model = LM()
    b = _batch(n=8)
    rows = [{k: v[i] for k, v in b.items()} for i in range(8)]
    pre = fk.optim.Preconditioner(model, structure="kfac", kind="mc", damping=1e-2, ema=0.0, shift_labels=True)
    cb = NaturalGradientCallback(pre)
    seen = []

    class Watch(transformers.TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, **kw):
            seen.append({n: p.detach().clone() for n, p in model.named_parameters()})

        def on_optimizer_step(self, args, state, control, **kw):
            lr = args.learning_rate
            for n, p in model.named_parameters():
                torch.testing.assert_close(p.detach(), seen[-1][n] - lr * cb.last_natural[n].to(p.dtype),
                                           rtol=1e-9, atol=1e-12)

    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4,
                                          learning_rate=0.1, optim="sgd", lr_scheduler_type="constant",
                                          max_grad_norm=0.0, weight_decay=0.0, report_to=[], save_strategy="no",
                                          use_cpu=True, logging_strategy="no", remove_unused_columns=False,
                                          dataloader_num_workers=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=rows, callbacks=[Watch(), cb])
    trainer.train()
    assert len(seen) == 2 and pre.steps == 2 and pre.curvature is not None


# ---- the runnable example of docs/transformers.md, at a tinier size --------------------------------------
DOCS = Path(__file__).resolve().parents[2] / "docs" / "transformers.md"


def _docs_example(marker):
    text = DOCS.read_text()
    start = text.index(f"<!-- example:{marker} -->")
    body = text[text.index("```python\n", start) + len("```python\n"):]
    return body[:body.index("```")]


def test_docs_ewc_trainer_example_runs_and_ewc_holds_the_weights(tmp_path, monkeypatch):
    """The docs' EWC-in-a-Trainer example, run as written with smaller sizes: the EWC model moves less than the
    plain one in the old task's Fisher norm (θ − θ*)ᵀ F (θ − θ*), F and θ* being what EWC consolidated."""
    code = _docs_example("ewc-trainer")
    for old, new in (("T, N = 64, 256", "T, N = 16, 32"),
                     ("SIZE = dict(n_embd=64, n_layer=2, n_head=4)", "SIZE = dict(n_embd=16, n_layer=1, n_head=2)")):
        assert old in code
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code, str(DOCS), "exec"), ns)  # noqa: S102 - our own documentation
    ewc, model, plain = ns["ewc"], ns["model"], ns["plain"]
    term = ewc.terms[0]
    F = term.fisher
    anchor = F.flatten(term.anchor)

    def drift(m):
        d = F.flatten({n: p.detach() for n, p in m.named_parameters()}) - anchor
        return float(F.quadratic_form(d))

    assert ewc.num_tasks == 1 and F.info.size == sum(p.numel() for p in model.parameters())
    assert 0 < drift(model) < drift(plain)
    torch.testing.assert_close(ewc.penalty().detach(), torch.tensor(0.5 * ewc.lam * drift(model)), rtol=1e-4, atol=0)
