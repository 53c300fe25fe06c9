"""Bad input raises a named FisherkitError before any work; computing never changes the model or the global RNG."""

import pytest
import torch

import fisherkit as fk
from fisherkit.laplace import Laplace, LaplaceError, NotFittedError

from .laplace_fixtures import mlp


@pytest.mark.parametrize("kwargs,match", [
    ({"likelihood": "poisson"}, "likelihood"),
    ({"structure": "implicit"}, "structure"),
    ({"kind": "fisher"}, "kind"),
    ({"subset": "first_layer"}, "subset"),
    ({"subset": ["0.weight", "nope"]}, "not trainable"),
    ({"prior_precision": -1.0}, "positive"),
    ({"prior_precision": [1.0, 2.0]}, "entries"),
    ({"prior_precision": {"0.weight": 1.0}}, "missing"),
    ({"prior_mean": torch.zeros(3)}, "prior_mean"),
    ({"sigma": 0.0}, "sigma"),
    ({"mc_samples": 0}, "mc_samples"),
    ({"generator": 3}, "generator"),
])
def test_bad_constructor_arguments(kwargs, match):
    m, _, _ = mlp()
    with pytest.raises(LaplaceError, match=match):
        Laplace(m, **kwargs)


def test_needs_fit_and_bad_calls():
    m, X, y = mlp()
    la = Laplace(m, structure="diag")
    for call in (la.log_marginal_likelihood, lambda: la.predictive(X), lambda: la.sample(2), la.posterior_variance):
        with pytest.raises(NotFittedError):
            call()
    with pytest.raises(LaplaceError, match="one-shot"):
        la.fit(iter([(X, y)]))
    la.fit((X, y))
    before = la.prior_precision.clone()
    for kw, match in [({"method": "nope"}, "method"), ({"method": "cv"}, "val_data"), ({"prior_structure": "x"}, "prior_structure"),
                      ({"fit_sigma": True}, "gaussian"), ({"n_steps": 0}, "n_steps"), ({"method": "grid", "grid": [-1.0]}, "grid")]:
        with pytest.raises(LaplaceError, match=match):
            la.optimize_prior_precision(**kw)
        assert torch.equal(la.prior_precision, before)
    with pytest.raises(LaplaceError, match="method"):
        la.predictive(X, method="bridge")
    with pytest.raises(LaplaceError, match="n_samples"):
        la.predictive(X, method="mc", n_samples=0)
    with pytest.raises(LaplaceError, match="positive"):
        la.log_marginal_likelihood(prior_precision=-2.0)
    assert isinstance(LaplaceError("x"), fk.FisherkitError)


def _snapshot(m):
    return ({k: v.clone() for k, v in m.state_dict().items()}, [mod.training for mod in m.modules()])


@pytest.mark.parametrize("training", [False, True])
def test_model_and_global_rng_untouched(training):
    m, X, y = mlp()
    m.train(training)
    m.register_buffer("counter", torch.zeros(1))
    state, modes = _snapshot(m)
    rng = torch.get_rng_state()
    la = Laplace(m, structure="kfac", kind="mc").fit((X, y))
    la.optimize_prior_precision("marglik", n_steps=5)
    la.predictive(X, "mc", n_samples=5)
    la.predictive(X, "samples", n_samples=3)
    la.predictive(X, "probit")
    la.sample(4)
    Laplace(m, subset="last_layer", structure="diag").fit((X, y)).predictive(X)
    assert torch.equal(torch.get_rng_state(), rng)
    new_state, new_modes = _snapshot(m)
    assert new_modes == modes
    assert all(torch.equal(state[k], new_state[k]) for k in state)
    assert all(p.grad is None for p in m.parameters())
