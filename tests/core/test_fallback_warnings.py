"""KFAC/EKFAC's warning about parameters without a Kronecker factorisation: once, naming them, at the
caller's line; never for all-Linear models; the optimizer's own warning replaces it (not both)."""

import warnings

import pytest
import torch

import fisherkit as fk
from fisherkit.optim import Preconditioner
from models import make


def test_no_warning_when_every_layer_is_factored():
    m, X = make("mlp")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fk.fisher(m, (X, None), structure="kfac")
        fk.fisher(m, (X, None), structure="ekfac")


@pytest.mark.parametrize("structure", [
    "kfac", "ekfac"])
def test_one_warning_naming_the_fallback_at_the_callers_line(structure):
    m, X = make("ln_emb")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fk.fisher(m, (X, None), structure=structure)
    assert len(caught) == 1, [str(w.message) for w in caught]
    msg = str(caught[0].message)
    assert msg.startswith(f"{structure}: no Kronecker factorisation for ") and "emb.weight" in msg
    assert msg.endswith("these parameters fall back to a dense block (small) or a diagonal (large)")
    assert caught[0].filename == __file__  # stacklevel: the user's call, not fisherkit's internals


def test_optimizer_warns_once_with_its_own_message():
    m, X = make("ln_emb")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pre = Preconditioner(m, structure="kfac", kind="exact")
        m.zero_grad()
        torch.nn.functional.cross_entropy(m(X), torch.zeros(X.shape[0], dtype=torch.long)).backward()
        pre.step()
    msgs = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(msgs) == 1 and "use a diagonal Fisher instead" in msgs[0], msgs
