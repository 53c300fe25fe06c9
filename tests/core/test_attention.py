"""nn.MultiheadAttention without torch.func (engine/attention.py), and layers that see the samples in
another dimension than the first (sequence-first layouts), against float64 brute force.

References: ``tests.reference.brute_fisher`` (per-sample jacrev, float64), and for KFAC an explicit
attention module with ``nn.Linear`` q/k/v/out projections holding the same weights (its Linear
layers take fisherkit's ordinary hook path, itself checked against brute force in test_kfac_reference).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import fisherkit as fk
from fisherkit.engine import functional
from fisherkit.engine.units import make_plan, settle

from reference import brute_fisher


def rel(a, b):
    return float((a - b).norm() / b.norm())


class AttnModel(nn.Module):
    """Embedding → one MultiheadAttention call (variants below) → mean → Linear head."""

    def __init__(self, d=8, heads=2, vocab=11, classes=3, batch_first=True, variant="self", seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(vocab, d)
        self.mem = nn.Linear(d, d) if variant == "cross" else None
        self.attn = nn.MultiheadAttention(d, heads, batch_first=batch_first)
        self.head = nn.Linear(d, classes)
        self.variant, self.batch_first = variant, batch_first

    def forward(self, tokens):
        h = self.emb(tokens)
        b, t = tokens.shape
        if not self.batch_first:
            h = h.transpose(0, 1)
        kw = {"need_weights": False}
        if self.variant == "causal":
            kw.update(attn_mask=nn.Transformer.generate_square_subsequent_mask(t, dtype=h.dtype), is_causal=True)
        elif self.variant == "padding":  # token 0 is padding (never at position 0); weights returned
            kpm = (tokens == 0) & (torch.arange(t) > 0)
            kw = {"key_padding_mask": kpm, "need_weights": True}
        elif self.variant == "mask3d":  # a float mask per (sample, head), from the tokens
            dist = (tokens[:, None, :, None] - tokens[:, None, None, :]).abs().to(h.dtype)  # [B, 1, T, T]
            scale = torch.arange(1, self.attn.num_heads + 1, dtype=h.dtype)[None, :, None, None]
            kw.update(attn_mask=(-0.1 * scale * dist).reshape(b * self.attn.num_heads, t, t))
        if self.variant == "cross":
            out = self.attn(h, torch.tanh(self.mem(h)), torch.tanh(self.mem(h)), **kw)[0]
        else:
            out = self.attn(h, h, h, **kw)[0]
        if not self.batch_first:
            out = out.transpose(0, 1)
        return self.head(out.mean(1))


class ExplicitAttention(nn.Module):
    """The same attention as AttnModel (batch-first self-attention) with nn.Linear projections."""

    def __init__(self, src: AttnModel):
        super().__init__()
        d = src.attn.embed_dim
        self.heads = src.attn.num_heads
        self.emb = src.emb
        self.in_proj = nn.Linear(d, 3 * d)
        self.out_proj = nn.Linear(d, d)
        self.head = src.head
        with torch.no_grad():
            self.in_proj.weight.copy_(src.attn.in_proj_weight)
            self.in_proj.bias.copy_(src.attn.in_proj_bias)
            self.out_proj.weight.copy_(src.attn.out_proj.weight)
            self.out_proj.bias.copy_(src.attn.out_proj.bias)

    def forward(self, tokens):
        h = self.emb(tokens)
        b, t, e = h.shape
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in self.in_proj(h).split(e, -1))
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(e // self.heads), -1)
        return self.head(self.out_proj((att @ v).transpose(1, 2).reshape(b, t, e)).mean(1))


def data(n=6, t=5, vocab=11, classes=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    X = torch.randint(1, vocab, (n, t), generator=g)
    X[1::2, -2:] = 0  # padding at the end of odd rows
    return X, torch.randint(0, classes, (n,), generator=g)


@pytest.mark.parametrize("variant,batch_first", [("self", True), ("self", False), ("causal", True),
                                                 ("padding", True), ("mask3d", True), ("cross", True)])
@pytest.mark.parametrize("kind", ["exact", "empirical"])
def test_attention_dense_equals_brute_force(variant, batch_first, kind):
    m = AttnModel(batch_first=batch_first, variant=variant).double().eval()
    X, y = data()
    F = fk.fisher(m, (X, y), kind=kind, structure="dense", batch_size=4).to_dense()
    ref = brute_fisher(m, X, y, "categorical", kind)
    assert rel(F, ref) < 1e-10


@pytest.mark.parametrize("variant", ["self", "causal", "padding", "mask3d"])
def test_self_attention_needs_no_torch_func(variant, monkeypatch):
    """Every parameter of a batch-first self-attention model is on a hook: the per-sample vmap never runs."""
    m = AttnModel(variant=variant).double().eval()
    X, y = data()

    def refuse(*a, **k):
        raise AssertionError("torch.func per-sample pass used")

    monkeypatch.setattr(functional, "persample_grads", refuse)
    monkeypatch.setattr("fisherkit.engine.collect.persample_grads", refuse)
    D = fk.fisher(m, (X, y), kind="exact", structure="diag", batch_size=4).diag()
    assert rel(D, brute_fisher(m, X, y, "categorical", "exact").diagonal()) < 1e-10
    plan = settle(m, make_plan(m, dict(m.named_parameters()), elementwise=True), X)
    assert plan.func_names == []
    assert {u.weight for u in plan.hook_units} >= {"attn.in_proj_weight", "attn.out_proj.weight"}


def test_cross_attention_in_projection_takes_torch_func_out_proj_a_hook():
    m = AttnModel(variant="cross").double().eval()
    X, _ = data()
    plan = settle(m, make_plan(m, dict(m.named_parameters()), elementwise=True), X)
    assert "attn.in_proj_weight" in plan.func_names
    assert "attn.out_proj.weight" in [u.weight for u in plan.hook_units]


@pytest.mark.parametrize("approx", ["expand", "reduce"])
@pytest.mark.parametrize("structure", ["kfac", "ekfac"])
def test_attention_kfac_equals_explicit_linear_projections(structure, approx):
    """The packed in-projection's factors are those of a Linear(E, 3E) on the same inputs: A = x xᵀ, G over
    [q | k | v]; out_proj's those of its Linear. Compared through an explicit model with nn.Linear layers."""
    m = AttnModel().double().eval()
    e = ExplicitAttention(m).double().eval()
    X, y = data()
    K = fk.fisher(m, (X, y), kind="exact", structure=structure, batch_size=4, kfac_approx=approx)
    R = fk.fisher(e, (X, y), kind="exact", structure=structure, batch_size=4, kfac_approx=approx)
    fk_, fr = K.factors() if structure == "kfac" else None, R.factors() if structure == "kfac" else None
    if structure == "kfac":
        for mine, ref in [("attn.in_proj_weight", "in_proj.weight"), ("attn.out_proj.weight", "out_proj.weight"),
                          ("head.weight", "head.weight")]:
            for a, b in zip(fk_[mine], fr[ref]):
                assert rel(a, b) < 1e-10
    # the whole matrix, up to the order of the parameters (same order here: emb, in_proj, out_proj, head)
    order = ["emb.weight", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias",
             "head.weight", "head.bias"]
    assert [n for n in K.info.names if n != "mem.weight" and n != "mem.bias"] == order
    keep = torch.cat([torch.arange(o, o + k) for n, o, k in zip(K.info.names, K.info.offsets, K.info.numels)
                      if n in order])
    assert rel(K.to_dense()[keep][:, keep], R.to_dense()) < 1e-10


def test_attention_leaves_no_hook_and_changes_nothing():
    m = AttnModel(variant="padding").double().eval()
    X, y = data()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.no_grad():
        out0 = m(X)
    state = torch.random.get_rng_state()
    fk.fisher(m, (X, y), kind="mc", structure="kfac", generator=0)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert not m.attn._forward_hooks and not m.attn._forward_pre_hooks and not m.attn.out_proj._forward_hooks
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    assert torch.is_grad_enabled()
    with torch.no_grad():
        assert torch.equal(m(X), out0)


def test_transformer_encoder_sequence_first_equals_brute_force():
    """nn.TransformerEncoderLayer(batch_first=False): attention, its Linear layers and LayerNorms see [T, B, d]."""
    torch.manual_seed(0)

    class Enc(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(11, 8)
            self.enc = nn.TransformerEncoderLayer(8, 2, dim_feedforward=12, dropout=0.0)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.enc(self.emb(x).transpose(0, 1)).mean(0))

    m = Enc().double().eval()
    X, y = data(n=5, t=5)  # T == B: a layout check on shapes alone could not tell them apart
    F = fk.fisher(m, (X, y), kind="exact", structure="dense", batch_size=5).to_dense()
    assert rel(F, brute_fisher(m, X, y, "categorical", "exact")) < 1e-10


def test_linear_on_sequence_first_tensor_equals_brute_force():
    """A Linear applied to [T, B, d] inside the model: its hook would group the wrong rows; it is detected
    by the two probes and differentiated by torch.func (was 3.7 % off when T == B)."""
    torch.manual_seed(0)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.lin, self.head = nn.Embedding(20, 6), nn.Linear(6, 6), nn.Linear(6, 3)

        def forward(self, x):
            h = torch.tanh(self.lin(self.emb(x).transpose(0, 1))).transpose(0, 1)
            return self.head(h.mean(1))

    m = M().double().eval()
    X, y = data(n=6, t=6, vocab=20)
    D = fk.fisher(m, (X, y), kind="exact", structure="diag").diag()
    assert rel(D, brute_fisher(m, X, y, "categorical", "exact").diagonal()) < 1e-10


def test_natural_gradient_on_attention_matches_core():
    """The optimizer's recorder sees the same attention units as fk.fisher: its preconditioned gradient
    is KFAC's solve on the same batch."""
    from fisherkit.optim import Preconditioner

    m = AttnModel().double().train()
    X, y = data()
    pre = Preconditioner(m, structure="kfac", kind="exact", damping=1e-2, ema=0.0, pi_damping=False)
    m.zero_grad()
    torch.nn.functional.cross_entropy(m(X), y).backward()
    g = torch.cat([p.grad.reshape(-1) for p in m.parameters()])
    pre.step()
    got = torch.cat([p.grad.reshape(-1) for p in m.parameters()])
    F = fk.fisher(m.eval(), (X, y), kind="exact", structure="kfac", batch_size=len(X))
    assert {"attn.in_proj_weight", "attn.out_proj.weight"} <= set(F.factors())
    ref = F.solve(g, 1e-2)
    # the Kronecker layers (the embedding is a diagonal block in the optimizer, a dense one in fk.fisher)
    kron = torch.cat([torch.arange(o, o + k) for n, o, k in zip(F.info.names, F.info.offsets, F.info.numels)
                      if not n.startswith("emb.")])
    assert torch.allclose(got[kron], ref[kron], rtol=1e-8, atol=1e-11)

