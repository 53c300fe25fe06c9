"""One API vocabulary: kinds, structures, likelihoods and randomness named and refused the same way everywhere."""

import warnings

import pytest
import torch
from torch import nn

import fisherkit as fk
from fisherkit.choices import KINDS, STRUCTURES, as_generator
from fisherkit.errors import FisherkitError


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def test_every_structure_is_accepted_or_refused_with_a_reason():
    """fisher knows every structure; the optimizer and EWC accept each or say why not (never 'unknown')."""
    m = _mlp()
    X = torch.randn(16, 4, dtype=torch.float64)
    for s in STRUCTURES:
        F = fk.fisher(m, (X, None), structure=s)
        assert F.structure == s and F.shape == (43, 43)
        try:
            fk.optim.NaturalGradient(m, structure=s).remove_hooks()
        except FisherkitError as e:
            assert "not supported here" in str(e) and "unknown" not in str(e) and "use" in str(e)
        try:
            fk.continual.EWC(m, structure=s)
        except FisherkitError as e:
            assert "not supported here" in str(e) and "unknown" not in str(e)
    assert set(KINDS) == {"exact", "mc", "empirical"}


@pytest.mark.parametrize("call", [
    lambda m, X: fk.fisher(m, (X, None), likelihood="poisson"),
    lambda m, X: fk.optim.NaturalGradient(m, likelihood="poisson"),
    lambda m, X: fk.continual.EWC(m, likelihood="poisson"),
    lambda m, X: fk.active.egl_scores(m, X, likelihood="poisson"),
    lambda m, X: fk.fisher(m, (X, None), likelihood={"name": "gaussian", "tau": 2}),
])
def test_unknown_likelihood_is_the_same_named_error_everywhere(call):
    m, X = _mlp(), torch.randn(8, 4, dtype=torch.float64)
    with pytest.raises(FisherkitError, match="likelihood"):
        call(m, X)


def test_generator_takes_a_seed_or_a_generator_and_seed_is_a_deprecated_alias():
    g, s = as_generator(7)
    assert s == 7 and torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=torch.Generator().manual_seed(7)))
    mine = torch.Generator().manual_seed(11)
    g2, s2 = as_generator(mine)
    assert g2 is mine and s2 == 11  # handed over: used as it is
    with pytest.warns(DeprecationWarning, match="seed= is deprecated"):
        _, s3 = as_generator(None, seed=5)
    assert s3 == 5
    for bad in (-1, 2.5, "0", True):
        with pytest.raises(FisherkitError, match="generator"):
            as_generator(bad)
    with pytest.raises(FisherkitError, match="not both"):
        as_generator(1, seed=1)


def test_strategies_and_optimizer_take_generator():
    """The same seed through generator= and through the old seed= gives the same picks and MC labels."""
    m = _mlp()
    X = torch.randn(30, 4, dtype=torch.float64)
    a = fk.active.Random(generator=3).select(m, X, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        b = fk.active.Random(seed=3).select(m, X, 5)
    assert torch.equal(a, b)
    ng = fk.optim.NaturalGradient(m, structure="diag", generator=torch.Generator().manual_seed(4))
    assert ng.pre.generator.initial_seed() == 4
    ng.remove_hooks()


def test_pool_is_data_and_X_pool_still_works():
    m = _mlp()
    X = torch.randn(20, 4, dtype=torch.float64)
    ref = fk.active.egl_scores(m, X)
    assert torch.equal(fk.active.egl_scores(m, data=X), ref)
    with pytest.warns(DeprecationWarning, match="X_pool"):
        old = fk.active.egl_scores(m, X_pool=X)
    assert torch.equal(old, ref)
    with pytest.raises(FisherkitError, match="once"):
        fk.active.egl_scores(m, X, X_pool=X)
    assert torch.equal(fk.active.EGL().select(m, data=X, k=3), fk.active.EGL().select(m, X, 3))


def test_fisher_takes_an_int_seed_as_generator():
    m = _mlp()
    X = torch.randn(16, 4, dtype=torch.float64)
    a = fk.fisher(m, (X, None), kind="mc", generator=3).diag()
    b = fk.fisher(m, (X, None), kind="mc", generator=torch.Generator().manual_seed(3)).diag()
    assert torch.equal(a, b)
    for s in ("diag", "implicit"):
        assert fk.fisher(m, (X, None), kind="exact", structure=s, generator=3).num_samples == 16


def test_fisher_without_a_generator_leaves_the_global_rng_alone_and_is_reproducible():
    m = _mlp()
    X = torch.randn(16, 4, dtype=torch.float64)
    torch.manual_seed(5)
    before = torch.random.get_rng_state().clone()
    a = fk.fisher(m, (X, None), kind="mc").diag()
    assert torch.equal(torch.random.get_rng_state(), before)  # read, never advanced
    torch.manual_seed(5)
    assert torch.equal(fk.fisher(m, (X, None), kind="mc").diag(), a)
