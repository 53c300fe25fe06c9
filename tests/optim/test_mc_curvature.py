"""The optimizer's own MC curvature (labels sampled by the engine's recorder during the user's forward)
is unbiased for the exact Fisher of the batch, for every likelihood, with a stated CLT bound.

Reference: tests/reference.py's brute-force Fisher (per-sample Jacobians, float64) and hand-written
KFAC factors. R = 40 preconditioners with seeds 0..39 each take one step on the same batch with
ema = 0 (F̂ = the batch's MC Fisher); per entry z = (mean − F)/(σ̂/√R) must satisfy |z| ≤ 5, and the
scale t = ⟨F̂, F⟩/‖F‖² must be within 5 standard errors of 1 (a 40 % bias is checked to fail it).
"""

import math

import pytest
import torch
from torch import nn

import fisherkit as fk
from fisherkit.optim import Preconditioner
from reference import brute_fisher, brute_kfac, kfac_dense

R = 40
SIGMA = 0.5


def lik_object(name):
    return fk.Gaussian(SIGMA) if name == "gaussian" else name


def loss_fn(name, f, y):
    if name == "categorical":
        return nn.functional.cross_entropy(f, y)
    if name == "gaussian":
        return 0.5 * ((f - y) ** 2).sum(-1).mean() / SIGMA**2
    return nn.functional.binary_cross_entropy_with_logits(f, y, reduction="none").sum(-1).mean()


def setup(name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    g = torch.Generator().manual_seed(1)
    X = torch.randn(10, 3, generator=g, dtype=torch.float64)
    y = {"categorical": torch.randint(0, 3, (10,), generator=g),
         "gaussian": torch.randn(10, 3, generator=g, dtype=torch.float64),
         "bernoulli": (torch.rand(10, 3, generator=g, dtype=torch.float64) < 0.5).double()}[name]
    return model, X, y


def batch_fisher(model, X, y, name, structure, mc, seed):
    pre = Preconditioner(model, structure=structure, kind="mc", likelihood=lik_object(name), mc_samples=mc,
                         ema=0.0, seed=seed, pi_damping=False)
    model.zero_grad()
    loss_fn(name, model(X), y).backward()
    pre.step()
    pre.remove()
    F = pre.curvature
    return F.diag() if structure == "diag" else F.to_dense().reshape(-1)


@pytest.mark.parametrize("name", ["categorical", "gaussian", "bernoulli"])
@pytest.mark.parametrize("structure,mc", [("diag", 1), ("kfac", 1), ("dense", 4)])
def test_optimizer_mc_curvature_is_unbiased(name, structure, mc):
    model, X, y = setup(name)
    if structure == "kfac":
        ref = kfac_dense(model, brute_kfac(model, X, {"0": model[0], "2": model[2]}, name, sigma=SIGMA)).reshape(-1)
    else:
        F = brute_fisher(model, X, None, name, "exact", sigma=SIGMA)
        ref = F.diagonal() if structure == "diag" else F.reshape(-1)
    est = torch.stack([batch_fisher(model, X, y, name, structure, mc, seed) for seed in range(R)])
    sd = est.std(0)
    keep = sd > 1e-14 * ref.abs().max()
    z = (est.mean(0) - ref)[keep] / (sd[keep] / math.sqrt(R))
    assert float(z.abs().max()) <= 5, float(z.abs().max())
    assert torch.allclose(est.mean(0)[~keep], ref[~keep], atol=1e-12 * float(ref.abs().max()))

    def scale_ok(e):
        t = e @ ref / (ref @ ref)
        return abs(float(t.mean()) - 1) <= 5 * float(t.std()) / math.sqrt(R)

    assert scale_ok(est) and not scale_ok(0.6 * est)
