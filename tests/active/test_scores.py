"""EGL scores against a brute-force float64 loop: one backward per (sample, label), L2 norm."""

import pytest
import torch
from torch import nn

from fisherkit.active import egl_scores
from fisherkit.errors import FisherkitError, NonFiniteError, ShapeError
from tests.models import make


def brute_egl(model, X, likelihood="categorical", top_classes=None, params=None):
    """Reference: Σ_y p_y ‖∇θ ℓ(x, y)‖² with a Python loop over samples and labels."""
    model.eval()
    ps = [p for n, p in model.named_parameters() if p.requires_grad and (params is None or n in params)]
    out = []
    for i in range(X.shape[0]):
        f = model(X[i : i + 1])
        p = torch.softmax(f, -1)[0]
        labels = range(f.shape[1]) if top_classes is None else p.topk(top_classes).indices.tolist()
        total = torch.zeros((), dtype=torch.float64)
        for y in labels:
            if likelihood == "categorical":
                loss = torch.nn.functional.cross_entropy(model(X[i : i + 1]), torch.tensor([y]))
            else:
                raise AssertionError
            gs = torch.autograd.grad(loss, ps)
            total = total + p[y].detach() * sum((g.double() ** 2).sum() for g in gs)
        out.append(total)
    return torch.stack(out)


@pytest.mark.parametrize("name", ["mlp", "cnn", "conv1d", "residual", "ln_emb", "attention"])
def test_matches_brute_force(name):
    model, X = make(name, out=4)[:2]
    ref = brute_egl(model, X)
    got = egl_scores(model, X)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_top_classes_and_params_subset():
    model, X = make("mlp", out=5)[:2]
    torch.testing.assert_close(egl_scores(model, X, top_classes=2), brute_egl(model, X, top_classes=2))
    got = egl_scores(model, X, params=["2.weight"])
    torch.testing.assert_close(got, brute_egl(model, X, params={"2.weight"}), rtol=1e-10, atol=1e-12)
    # dropping labels can only lower the expectation
    assert (egl_scores(model, X, top_classes=2) <= egl_scores(model, X) + 1e-12).all()


def test_last_layer_closed_form_and_brute_force():
    model, X = make("mlp", out=4)[:2]
    got = egl_scores(model, X, scope="last_layer")
    ref = brute_egl(model, X, params={"2.weight", "2.bias"})
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        h = torch.tanh(model[0](X))
        p = torch.softmax(model(X), -1)
    closed = (1 - p.pow(2).sum(-1)) * (h.pow(2).sum(-1) + 1)
    torch.testing.assert_close(got, closed)


def test_trace_of_fisher_for_gaussian_and_batching():
    """E_y‖∇ℓ‖² = tr(one-point Fisher): compare with fk.fisher's dense exact Fisher per point."""
    import fisherkit as fk

    for lik in ["categorical", "gaussian", "bernoulli"]:
        model, X = make("mlp", out=3)[:2]
        s = egl_scores(model, X, likelihood=lik, batch_size=4)
        for i in range(3):
            F = fk.fisher(model, (X[i : i + 1], torch.zeros(1, dtype=torch.long)), likelihood=lik, structure="dense")
            torch.testing.assert_close(s[i], F.trace(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["cnn", "ln_emb"])
@pytest.mark.parametrize("lik", ["categorical", "gaussian", "bernoulli"])
def test_trace_of_brute_force_fisher_sigma(name, lik):
    """E_y‖∇ℓ‖² = tr(Jᵀ Λ J) for each point, against tests/reference.py's per-sample Jacobians (not
    fisherkit): every likelihood, the Gaussian with σ = 0.5 (a dropped σ is off by 4×), on a CNN and on
    an embedding model (the torch.func path)."""
    import fisherkit as fk
    from tests.reference import brute_fisher

    model, X = make(name, out=3)[:2]
    sigma = 0.5
    got = egl_scores(model, X, likelihood=fk.Gaussian(sigma) if lik == "gaussian" else lik, batch_size=2)
    ref = torch.stack([brute_fisher(model, X[i : i + 1], None, lik, "exact", sigma=sigma).trace()
                       for i in range(X.shape[0])])
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_linear_gaussian_closed_form():
    """f = Wx + b, y ~ N(f, σ²I): ∇ℓ = (f − y) x̃ᵀ/σ², so E_y‖∇ℓ‖² = C (‖x‖² + 1)/σ²."""
    import fisherkit as fk

    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    X = torch.randn(5, 3, dtype=torch.float64)
    got = egl_scores(model, X, likelihood=fk.Gaussian(0.5))
    torch.testing.assert_close(got, 2 * (X.pow(2).sum(1) + 1) / 0.25, rtol=1e-12, atol=0)


def test_restores_train_mode_and_dropout_off():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3)).double().train()
    X = torch.randn(6, 3, dtype=torch.float64)
    a, b = egl_scores(model, X), egl_scores(model, X)
    torch.testing.assert_close(a, b)  # deterministic: dropout is off while scoring
    assert model.training and model[2].training


def test_bad_input():
    model, X = make("mlp", out=3)[:2]
    with pytest.raises(FisherkitError, match="empty"):
        egl_scores(model, X[:0])
    Xn = X.clone()
    Xn[2, 1] = float("nan")
    with pytest.raises(NonFiniteError, match="row 2"):
        egl_scores(model, Xn)
    with pytest.raises(FisherkitError, match="scope"):
        egl_scores(model, X, scope="first_layer")
    with pytest.raises(FisherkitError, match="top_classes"):
        egl_scores(model, X, top_classes=0)
    one = nn.Sequential(nn.Linear(4, 1)).double()
    with pytest.raises(ShapeError, match="at least 2"):
        egl_scores(one, X)
    flat = nn.Sequential(nn.Linear(4, 3), nn.Flatten(0)).double()
    with pytest.raises(ShapeError, match=r"\[batch, classes\]"):
        egl_scores(flat, X)
    with pytest.raises(FisherkitError, match="likelihood"):
        egl_scores(model, X, likelihood="poisson")
    no_head = nn.Sequential(nn.Linear(4, 3), nn.Tanh()).double()
    with pytest.raises(FisherkitError, match="nn.Linear"):
        egl_scores(no_head, X, scope="last_layer")


def test_egl_with_layernorm_and_embedding_layers_matches_brute_force():
    """LayerNorm and Embedding take the engine's closed-form path in EGL too: Σ_y p_y ‖∇θ ℓ(x, y)‖² by loops."""
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(6, 5)
            self.ln = nn.LayerNorm(5)
            self.head = nn.Linear(5, 3)

        def forward(self, ids):
            return self.head(torch.tanh(self.ln(self.emb(ids))).mean(1))

    model = Net().double().eval()
    X = torch.randint(0, 6, (7, 4))
    got = egl_scores(model, X)
    params = [p for p in model.parameters()]
    want = []
    for i in range(X.shape[0]):
        f = model(X[i : i + 1])[0]
        p = torch.softmax(f, -1)
        s = 0.0
        for c in range(3):
            g = torch.autograd.grad(-torch.log_softmax(f, -1)[c], params, retain_graph=True)
            s += float(p[c]) * sum(float((t * t).sum()) for t in g)
        want.append(s)
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-9, atol=1e-12)
