"""The per-step fast paths of the optimizer against independent references:

* ``DampedInverse`` (damped inverse factors / reciprocals prepared once per refresh, layers of one
  shape stacked) equals the general ``Curvature.solve`` of the same curvature;
* ``transforms.first_nonfinite`` (one fused check) names the tensor a per-tensor scan names;
* ``fallback="adam"``: the parameters KFAC cannot factor take torch.optim.Adam's step (β₁ = 0) and leave
  the curvature (no per-sample pass for them), and a checkpoint resumes bit-exactly;
* ``kfac_approx="reduce"``: the optimizer's factors equal ``fk.fisher(..., kfac_approx="reduce")``.
"""

import pytest
import torch
import torch.nn.functional as tF
from torch import nn

import fisherkit as fk
from fisherkit.optim import NaturalGradient, Preconditioner
from fisherkit.optim.inverse import DampedInverse
from fisherkit.optim.transforms import first_nonfinite

from .optim_fixtures import classification_data


class Net(nn.Module):
    """Conv + Linear layers, two of the same shape (one stacked solve), one without bias."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)
        self.nb = nn.Linear(8 + 24, 5, bias=False)
        self.scale = nn.Parameter(torch.ones(8))  # no Kronecker factor: a diagonal (or dense) block

    def forward(self, x):
        h = torch.tanh(self.b(torch.tanh(self.a(x)))) * self.scale
        c = torch.tanh(self.conv(x.reshape(-1, 1, 2, 4))).flatten(1)
        return self.nb(torch.cat([h, c], 1))


def _data(n=40):
    X, y = classification_data(n=n, d_in=8, n_classes=5)
    return X, y


@pytest.mark.parametrize("structure,pi", [("kfac", True), ("kfac", False), ("ekfac", False), ("diag", False),
                                          ("dense", False)])
def test_damped_inverse_equals_curvature_solve(structure, pi):
    X, y = _data()
    model = Net().double()
    lam = 3e-2
    with pytest.warns(UserWarning) if structure in ("kfac", "ekfac") else _nothing():
        pre = Preconditioner(model, structure=structure, kind="exact", damping=lam, ema=0.0, pi_damping=pi)
    tF.cross_entropy(model(X), y).backward()
    pre.step()  # builds the curvature (and the inverse) from this batch
    g = {n: torch.randn(p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(i))
         for i, (n, p) in enumerate(model.named_parameters())}
    inv = DampedInverse(pre.curvature, lam, pi)
    if structure in ("kfac", "ekfac"):
        assert any(len(names) == 2 for *_, names, _ in inv.groups)  # a and b share one stacked solve
    got = inv.solve(g)
    ref = pre.info.split(pre.curvature.solve(pre.info.join(g), lam, pi_damping=pi))
    assert set(got) == set(ref)
    for n in ref:
        assert got[n].shape == g[n].shape
        torch.testing.assert_close(got[n], ref[n], rtol=1e-9, atol=1e-12)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_damped_inverse_is_rebuilt_when_the_damping_changes():
    X, y = _data()
    model = Net().double()
    with pytest.warns(UserWarning):
        pre = Preconditioner(model, structure="kfac", kind="exact", damping=1e-2, ema=0.0, update_every=1, inv_every=5)
    for lam in (1e-2, 1e-1):
        pre.damping = lam
        model.zero_grad()
        tF.cross_entropy(model(X), y).backward()
        g = pre.grads()
        got = pre.compute(g)
        ref = pre.info.split(pre.curvature.solve(pre.info.join(g), lam, pi_damping=True))
        for n in ref:
            torch.testing.assert_close(got[n], ref[n].reshape(g[n].shape), rtol=1e-9, atol=1e-12)


def test_first_nonfinite_names_what_a_per_tensor_scan_names():
    t = {"a": torch.ones(3), "b": torch.zeros(2, 2), "c": torch.ones(4)}
    assert first_nonfinite(t) is None
    t["c"][1] = float("nan")
    assert first_nonfinite(t) == "c"
    t["b"][0, 1] = float("inf")
    assert first_nonfinite(t) == "b"
    huge = {"h": torch.full((4,), 3e38)}  # finite entries whose norm overflows float32: nothing reported
    assert not bool(torch.isfinite(torch.linalg.vector_norm(huge["h"])))
    assert first_nonfinite(huge) is None
    assert first_nonfinite({}) is None


class TinyLM(nn.Module):
    """Embedding + LayerNorm (no Kronecker factor) around two Linear layers; float64."""

    def __init__(self, vocab=11, d=6):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(vocab, d)
        self.ln = nn.LayerNorm(d)
        self.up, self.head = nn.Linear(d, 2 * d), nn.Linear(2 * d, vocab)

    def forward(self, t):
        return self.head(torch.tanh(self.up(self.ln(self.emb(t)))))


def _tokens(seed, b=8, t=5, vocab=11):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (b, t + 1), generator=g)


def _lm_step(model, opt, seq):
    opt.zero_grad()
    out = model(seq[:, :-1])
    tF.cross_entropy(out.reshape(-1, out.shape[-1]), seq[:, 1:].reshape(-1)).backward()
    opt.step()


def test_fallback_adam_gives_the_unfactored_parameters_adams_step():
    """momentum 0, lr η: the embedding / LayerNorm parameters move exactly as torch.optim.Adam(betas=(0, β₂))
    moves them (Adam without first moment: the bias correction of β₁ = 0 is 1); KFAC's layers do not."""
    model, ref = TinyLM().double(), TinyLM().double()
    names = ["emb.weight", "ln.weight", "ln.bias"]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "falls back to a diagonal" warning: they are not in the curvature
        opt = NaturalGradient(model, lr=0.01, structure="kfac", kind="mc", fallback="adam", update_every=1,
                              graft="adam", graft_beta2=0.99, graft_eps=1e-8)
    assert opt.adam_names == names
    assert list(opt.pre.params) == ["up.weight", "up.bias", "head.weight", "head.bias"]
    assert opt.pre.plan.func_names == []  # no torch.func per-sample pass
    adam = torch.optim.Adam([p for n, p in ref.named_parameters() if n in names], lr=0.01, betas=(0.0, 0.99), eps=1e-8)
    for s in range(3):
        seq = _tokens(s)
        _lm_step(model, opt, seq)
        adam.zero_grad()
        out = ref(seq[:, :-1])
        tF.cross_entropy(out.reshape(-1, out.shape[-1]), seq[:, 1:].reshape(-1)).backward()
        adam.step()
        with torch.no_grad():  # keep the reference's factored layers where the optimizer put them
            for n, p in ref.named_parameters():
                if n not in names:
                    p.copy_(dict(model.named_parameters())[n])
    mine, theirs = dict(model.named_parameters()), dict(ref.named_parameters())
    for n in names:
        torch.testing.assert_close(mine[n], theirs[n], rtol=1e-10, atol=1e-13)


def test_fallback_adam_checkpoint_resumes_bit_exactly(tmp_path):
    def make(model):
        return NaturalGradient(model, lr=0.01, structure="ekfac", kind="mc", fallback="adam", momentum=0.9,
                               graft="adam", update_every=2, inv_every=4)

    model = TinyLM().double()
    opt = make(model)
    for s in range(5):
        _lm_step(model, opt, _tokens(s))
    opt.save(tmp_path / "opt.safetensors")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for s in range(5, 9):
        _lm_step(model, opt, _tokens(s))
    model2 = TinyLM().double()
    model2.load_state_dict(state)
    opt2 = make(model2)
    opt2.load(tmp_path / "opt.safetensors")
    for s in range(5, 9):
        _lm_step(model2, opt2, _tokens(s))
    for (n, p), p2 in zip(model.named_parameters(), model2.parameters()):
        assert torch.equal(p, p2), n


def test_fallback_adam_is_refused_where_it_means_nothing():
    with pytest.raises(fk.FisherkitError, match="fallback='adam'"):
        NaturalGradient(TinyLM().double(), structure="diag", fallback="adam")
    with pytest.raises(fk.FisherkitError, match="factors none"):
        NaturalGradient(nn.Sequential(nn.Embedding(5, 3)), structure="kfac", fallback="adam")
    with pytest.raises(fk.FisherkitError, match="fallback"):
        NaturalGradient(TinyLM().double(), fallback="sgd")


@pytest.mark.parametrize("approx", ["expand", "reduce"])
def test_kfac_approx_factors_equal_the_core_fisher(approx):
    model = TinyLM().double()
    names = ["up.weight", "up.bias", "head.weight", "head.bias"]
    pre = Preconditioner(model, structure="kfac", kind="exact", ema=0.0, kfac_approx=approx, params=names)
    seq = _tokens(0)
    out = model(seq[:, :-1])
    tF.cross_entropy(out.reshape(-1, out.shape[-1]), seq[:, 1:].reshape(-1)).backward()
    pre.step()
    # fk.fisher's per-sample loss is the sum over positions; the optimizer records the same directions
    F = fk.fisher(model, (seq[:, :-1], seq[:, 1:]), kind="exact", structure="kfac", kfac_approx=approx, params=names)
    for w, (A, G) in F.factors().items():
        A2, G2 = pre.curvature.factors()[w]
        torch.testing.assert_close(A2, A, rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(G2, G, rtol=1e-10, atol=1e-13)
    with pytest.raises(fk.FisherkitError, match="kfac_approx"):
        Preconditioner(model, structure="kfac", kfac_approx="mean")


@pytest.mark.parametrize("pi", [True, False])
def test_damped_inverse_of_transposed_layers_equals_the_blocks_solve(pi):
    """A weight stored [in, out] (HuggingFace Conv1D): the stacked solve reads and writes it transposed."""
    import inspect
    from types import SimpleNamespace

    from fisherkit.curvature.blocks import KronBlock

    if "transposed" not in inspect.signature(KronBlock).parameters:
        pytest.skip("this fisherkit's KronBlock has no transposed layers")
    g = torch.Generator().manual_seed(3)
    o, i = 4, 3

    def spd(n):
        x = torch.randn(2 * n, n, generator=g, dtype=torch.float64)
        return x.T @ x / (2 * n)

    blocks = [KronBlock(["w", "b"], [i * o, o], o, True, spd(i + 1), spd(o), transposed=True),
              KronBlock(["v"], [i * o], o, False, spd(i), spd(o), transposed=True),
              KronBlock(["u"], [i * o], o, False, spd(i), spd(o))]
    grads = {"w": torch.randn(i, o, generator=g, dtype=torch.float64), "b": torch.randn(o, generator=g, dtype=torch.float64),
             "v": torch.randn(i, o, generator=g, dtype=torch.float64), "u": torch.randn(o, i, generator=g, dtype=torch.float64)}
    got = DampedInverse(SimpleNamespace(blocks=blocks), 1e-2, pi).solve(grads)
    for b in blocks:
        ref = b.solve({n: grads[n].reshape(-1) for n in b.names}, 1e-2, pi)
        for n in b.names:
            torch.testing.assert_close(got[n], ref[n].reshape(grads[n].shape), rtol=1e-10, atol=1e-12)
