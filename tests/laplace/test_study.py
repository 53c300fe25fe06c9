"""The calibration study's plumbing on a tiny run (1 seed, 2 epochs): the held-out-class OOD split,
the predictive and prior options, and the Markdown tables the docs are rendered from."""

import math

import pytest
import torch

from fisherkit.studies import laplace as study


@pytest.fixture(scope="module")
def tiny():
    return study.run_calibration(quick=True, seeds=[3], epochs=2, methods=("map", "ll_kfac", "kfac", "ensemble"),
                                 n_members=2, angles=(0, 30), heldout_class=True)


def test_held_out_class_is_refitted_without_that_digit(tiny, monkeypatch):
    r = tiny["models"]["mlp"]
    seed = r["per_seed"][0]
    assert seed["heldout_class"] == 3
    for m in tiny["methods"]:
        assert 0.0 <= seed["splits"]["ood_class"][m]["auroc"] <= 1.0
        assert 0.0 <= seed["splits"]["ood_noise"][m]["auroc"] <= 1.0
    assert tiny["link"] == "probit_centred" and tiny["prior_structure"] == "scalar"
    # the class is absent from the refit's training labels, which are renumbered 0..8
    X = torch.randn(20, 64)
    y = torch.arange(20) % 10
    Xk, yk = study._without_class(X, y, 3)
    assert len(yk) == 18 and int(yk.max()) == 8 and torch.equal(Xk, X[y != 3])
    assert torch.equal(yk, torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8] * 2))


def test_tables_carry_every_column(tiny):
    text = study.format_table(tiny)
    assert "AUROC class" in text and "probit_centred" in text
    md = study.markdown_tables(tiny)
    assert "| all-layer KFAC LA |" in md and "NLL per split" in md and "| method | clean | 30° |" in md
    numbers, html, headline = study.calibration_summary(tiny)
    assert "ECE" in headline and "<pre>" in html
    for m in tiny["methods"]:
        assert math.isfinite(numbers["mlp"]["shift"][m]["nll"])


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="link"):
        study.run_calibration(quick=True, link="bridge")
    with pytest.raises(ValueError, match="prior_structure"):
        study.run_calibration(quick=True, prior_structure="diagonal")
