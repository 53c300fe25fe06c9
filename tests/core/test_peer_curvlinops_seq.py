"""KFAC-expand and KFAC-reduce factors of a causal decoder equal curvlinops' (an independent implementation).

Skipped where curvlinops is not installed (the default CI venv); the benchmark (``bench_fisher.py --models M5``)
makes the same check on the full-size M5. Conventions (docs/transformers.md, "KFAC conventions"): fisherkit's
factors are means over the N sequences; curvlinops with ``CrossEntropyLoss(reduction="sum")`` has the same A and
N × G, with ``reduction="mean"`` G / T (fisherkit's ``per_token`` scale); curvlinops wants logits [B, V, T]. The
deterministic empirical Fisher is compared (curvlinops' type-2 is another quantity on sequences: it keeps the
cross terms between positions).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fisherkit as fk

curvlinops = pytest.importorskip("curvlinops")

N, T, V = 6, 12, 11


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln = nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.up, self.down = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x):
        B, S, d = x.shape
        h = self.ln(x)
        q, k, v = (m(h).reshape(B, S, self.heads, -1).transpose(1, 2) for m in (self.q, self.k, self.v))
        a = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, S, d)
        x = x + self.o(a)
        return x + self.down(torch.tanh(self.up(x)))


class Decoder(nn.Module):
    def __init__(self, d=8, heads=2, layers=2):
        super().__init__()
        self.emb, self.pos = nn.Embedding(V, d), nn.Embedding(T, d)
        self.blocks = nn.Sequential(*[Block(d, heads) for _ in range(layers)])
        self.head = nn.Linear(d, V)

    def forward(self, ids):
        return self.head(self.blocks(self.emb(ids) + self.pos(torch.arange(ids.shape[1]))))


class ClassesSecond(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).transpose(1, 2)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = Decoder().double().eval()
    ids = torch.randint(0, V, (N, T))
    labels = torch.randint(0, V, (N, T))
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return model, ids, labels, linear


def _curvlinops(model, ids, labels, linear, approx, reduction):
    mods = dict(model.named_modules())
    params = [p for n in linear for p in (mods[n].weight, mods[n].bias)]
    data = [(ids[:3], labels[:3]), (ids[3:], labels[3:])]
    op = curvlinops.KFACLinearOperator(ClassesSecond(model), nn.CrossEntropyLoss(reduction=reduction), params, data,
                                       fisher_type="empirical", kfac_approx=approx, separate_weight_and_bias=False,
                                       check_deterministic=False, num_data=N, num_per_example_loss_terms=T)
    op.compute_kronecker_factors()
    return {k.removeprefix("model.") + ".weight": (op._input_covariances[k], op._gradient_covariances[k])
            for k in op._mapping}


def _ours(model, ids, labels, linear, approx, per_token=False):
    params = [f"{n}.{k}" for n in linear for k in ("weight", "bias")]
    return fk.fisher(model, (ids, labels), kind="empirical", structure="kfac", params=params, batch_size=3,
                     kfac_approx=approx, per_token=per_token).factors()


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("approx", ["expand", "reduce"])
def test_kfac_factors_equal_curvlinops(setup, approx):
    model, ids, labels, linear = setup
    ours = _ours(model, ids, labels, linear, approx)
    peer = _curvlinops(model, ids, labels, linear, approx, "sum")
    assert set(ours) == set(peer) and len(ours) == len(linear)
    expand_G = {w: G for w, (_, G) in _ours(model, ids, labels, linear, "expand").items()}
    zero = 0
    for w, (A, G) in ours.items():
        Ap, Gp = peer[w]
        assert _rel(Ap, A) < 1e-12, w
        if approx == "reduce" and ".k." in w:
            # KFAC-reduce on attention keys: Σ_s ∂L/∂k_s = 0 (softmax ignores a shift of the scores) — zero in both
            assert G.norm() < 1e-10 * expand_G[w].norm() and Gp.norm() / N < 1e-10 * expand_G[w].norm(), w
            zero += 1
            continue
        assert _rel(Gp / N, G) < 1e-10, w
    assert zero == (2 if approx == "reduce" else 0)


def test_kfac_per_token_equals_curvlinops_mean(setup):
    """per_token=True is the per-token scale of curvlinops' reduction='mean': the same A, G / T (was
    A / T too before 10e0129)."""
    model, ids, labels, linear = setup
    ours = _ours(model, ids, labels, linear, "expand", per_token=True)
    peer = _curvlinops(model, ids, labels, linear, "expand", "mean")
    for w, (A, G) in ours.items():
        Ap, Gp = peer[w]
        torch.testing.assert_close(torch.kron(G, A), torch.kron(Gp, Ap), rtol=1e-10, atol=0)
