"""Streams (shapes, labels, permutations/rotations checked directly), metrics (hand-computed
matrices), baselines (SI path integral against a closed form on a quadratic)."""

import numpy as np
import pytest
import torch

from fisherkit.continual import PermutedDigits, RotatedDigits, SplitDigits, metrics
from fisherkit.continual.baselines import SI, L2, make_method
from fisherkit.continual.streams import _rotate, make_stream
from fisherkit.errors import FisherkitError


def test_permuted_digits_are_pixel_permutations():
    s = PermutedDigits(3, seed=0)
    assert len(s) == 3 and s.scenario == "domain"
    base = s[0].X_train
    for t in (1, 2):
        X = s[t].X_train
        # each column of X is some column of the unpermuted data: a permutation, not a new image
        match = (X[:, :, None] == base[:, None, :]).all(0)
        assert match.any(1).all() and torch.equal(s[t].y_train, s[0].y_train)
    assert not torch.equal(s[1].X_train, s[2].X_train)


def test_rotation_by_90_degrees_is_exact_and_full_turn_is_identity():
    X = torch.rand(5, 64, dtype=torch.float64)
    r90 = _rotate(X, 90).reshape(5, 8, 8)
    img = X.reshape(5, 8, 8)
    assert torch.allclose(r90, torch.rot90(img, 1, (1, 2)), atol=1e-12) or torch.allclose(
        r90, torch.rot90(img, -1, (1, 2)), atol=1e-12)
    assert torch.allclose(_rotate(X, 360), X, atol=1e-12)
    s = RotatedDigits(3, seed=0)
    assert torch.equal(s[0].X_train, PermutedDigits(1, seed=0)[0].X_train)


@pytest.mark.parametrize("scenario", ["task", "domain", "class"])
def test_split_digits_scenarios(scenario):
    s = SplitDigits(scenario, seed=0)
    assert len(s) == 5
    for t, task in enumerate(s):
        assert task.classes == [2 * t, 2 * t + 1]
        labels = set(task.y_train.tolist())
        assert labels == ({2 * t, 2 * t + 1} if scenario == "class" else {0, 1})
        assert task.head == (t if scenario == "task" else 0)
    model = s.make_model((8,), seed=0)
    for t in range(5):
        s.prepare(model, t)
        out = model(s[t].X_test)
        expected = {"task": 2, "domain": 2, "class": 2 * (t + 1)}[scenario]
        assert out.shape[1] == expected
    assert len(model.heads) == (5 if scenario == "task" else 1)


def test_bad_streams():
    with pytest.raises(FisherkitError, match="unknown stream"):
        make_stream("mnist")
    with pytest.raises(FisherkitError, match="scenario"):
        SplitDigits("both")
    with pytest.raises(FisherkitError, match="n_tasks"):
        PermutedDigits(0)


def test_metrics_by_hand():
    R = np.array([[0.9, np.nan, np.nan], [0.6, 0.8, np.nan], [0.7, 0.5, 0.95]])
    assert metrics.average_accuracy(R) == pytest.approx((0.7 + 0.5 + 0.95) / 3)
    assert metrics.average_accuracy(R, after=1) == pytest.approx(0.7)
    assert metrics.backward_transfer(R) == pytest.approx(((0.7 - 0.9) + (0.5 - 0.8)) / 2)
    # forgetting: task 0 best 0.9 → 0.7; task 1 best 0.8 → 0.5
    assert metrics.forgetting(R) == pytest.approx((0.2 + 0.3) / 2)
    # forgetting uses the best accuracy, not the one right after learning
    R2 = np.array([[0.5, np.nan, np.nan], [0.9, 0.8, np.nan], [0.6, 0.8, 0.9]])
    assert metrics.forgetting(R2) == pytest.approx((0.3 + 0.0) / 2)
    assert metrics.backward_transfer(R2) == pytest.approx((0.1 + 0.0) / 2)
    assert metrics.forgetting([[0.7]]) == 0.0
    with pytest.raises(FisherkitError, match="square"):
        metrics.forgetting(np.zeros((2, 3)))
    with pytest.raises(FisherkitError, match="non-finite"):
        metrics.average_accuracy([[np.nan]])


def test_si_importance_closed_form_on_quadratic():
    """One parameter, loss ½ a θ², plain gradient descent θ ← (1−ηa)θ from θ0: the path integral
    Σ −g Δθ telescopes to the loss drop ½a(θ0² − θ_K²) only as η→0; compute it exactly here."""

    class Stream1:
        def task_params(self, model, t):
            return ["w"]

    model = torch.nn.Module()
    model.w = torch.nn.Parameter(torch.tensor([2.0], dtype=torch.float64))
    si = SI(c=1.0, xi=0.5)
    si.before_task(model, Stream1(), 0)
    a, eta, theta, omega = 3.0, 0.05, 2.0, 0.0
    for _ in range(20):
        model.w.grad = None
        (0.5 * a * model.w**2).sum().backward()
        si.after_backward(model)
        g = a * theta
        with torch.no_grad():
            model.w -= eta * model.w.grad
        si.after_step(model)
        new = theta - eta * g
        omega += -g * (new - theta)
        theta = new
    si.after_task(model, Stream1(), 0)
    expected = omega / ((theta - 2.0) ** 2 + 0.5)
    assert si.omega["w"].item() == pytest.approx(expected, rel=1e-12)
    with torch.no_grad():
        model.w += 0.3
    assert si.penalty(model).item() == pytest.approx(expected * 0.09, rel=1e-12)


def test_l2_and_make_method():
    with pytest.raises(FisherkitError, match="unknown method"):
        make_method("replay")
    with pytest.raises(FisherkitError, match="lam"):
        make_method("ewc", -1.0)
    with pytest.raises(FisherkitError):
        L2(-0.1)
    assert make_method("joint").joint and not make_method("finetune").joint
