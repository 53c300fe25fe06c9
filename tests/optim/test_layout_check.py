"""The optimizer runs the engine's layout check (engine.units.settle) on its first batch."""

import pytest

import fisherkit as fk
import torch
from torch import nn

from reference import brute_fisher


def data(n=6, t=5, vocab=11, classes=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, t), generator=g), torch.randint(0, classes, (n,), generator=g)


def test_natural_gradient_on_sequence_first_linear_matches_core():
    """The optimizer runs the engine's layout check on its first batch: a Linear fed [T, B, d] is not hooked
    (it warns and uses torch.func), so its diagonal curvature is the true one; the RNG is untouched."""
    from fisherkit.optim import Preconditioner

    torch.manual_seed(0)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.lin, self.head = nn.Embedding(20, 6), nn.Linear(6, 6), nn.Linear(6, 3)

        def forward(self, x):
            return self.head(torch.tanh(self.lin(self.emb(x).transpose(0, 1))).transpose(0, 1).mean(1))

    m = M().double()
    X, y = data(n=6, t=6, vocab=20)
    pre = Preconditioner(m, structure="diag", kind="exact", damping=1e-3, ema=0.0, pi_damping=False)
    m.zero_grad()
    torch.nn.functional.cross_entropy(m(X), y).backward()
    g = torch.cat([p.grad.reshape(-1) for p in m.parameters()])
    state = torch.random.get_rng_state()
    with pytest.warns(UserWarning, match="'lin'"):
        pre.step()
    assert torch.equal(torch.random.get_rng_state(), state)
    got = torch.cat([p.grad.reshape(-1) for p in m.parameters()])
    ref = g / (brute_fisher(m, X, y, "categorical", "exact").diagonal() + 1e-3)
    assert torch.allclose(got, ref, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("structure", ["kfac", "ekfac"])
def test_natural_gradient_on_gpt2_conv1d_matches_core(structure):
    """GPT-2's Conv1D layers ([in, out] weights) are Kronecker blocks in the optimizer too: its preconditioned
    gradient equals fk.fisher's solve on the same batch (the optimizer builds its own EKFAC blocks)."""
    transformers = pytest.importorskip("transformers")
    from fisherkit.optim import Preconditioner

    cfg = transformers.GPT2Config(vocab_size=11, n_positions=8, n_embd=8, n_layer=1, n_head=2,
                                  attn_implementation="eager", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).double().eval()
    params = [n for n, _ in model.named_parameters() if ".h.0.attn.c_" in n or ".h.0.mlp.c_" in n]
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 11, (4, 6), generator=g)
    pre = Preconditioner(model, structure=structure, kind="exact", damping=1e-2, ema=0.0, pi_damping=False,
                         params=params, output="logits", shift_labels=True)
    model.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()
    chosen = dict(model.named_parameters())
    grad = torch.cat([chosen[n].grad.reshape(-1) for n in params])
    pre.step()
    got = torch.cat([chosen[n].grad.reshape(-1) for n in params])
    F = fk.fisher(model, {"input_ids": ids, "labels": ids}, kind="exact", structure=structure, params=params,
                  output="logits", shift_labels=True)
    assert F.info.names == params and all(b.transposed for b in F.blocks)
    torch.testing.assert_close(got, F.solve(grad, 1e-2), rtol=1e-7, atol=1e-10)
