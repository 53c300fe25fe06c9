"""prune(): selection, OBS updates against brute-force Fishers (tests/reference.py), masks, bad input."""

import pytest
import torch

import fisherkit as fk
from fisherkit.errors import FisherkitError
from fisherkit.prune import PruneError, keep_masked, masks, prune
from reference import brute_fisher

from .conftest import data, kkt, mlp


def flat(m):
    return torch.cat([p.detach().reshape(-1) for p in m.parameters()])


def test_magnitude_global_and_per_layer_remove_the_smallest():
    net = mlp()
    w0, w2 = net[0].weight.detach().abs(), net[2].weight.detach().abs()
    allw = torch.cat([w0.reshape(-1), w2.reshape(-1)])
    k = round(0.6 * allw.numel())
    thr = torch.sort(allw).values[k - 1]
    p = prune(net, sparsity=0.6, method="magnitude")
    torch.testing.assert_close(masks(p)["0.weight"], w0 > thr)
    torch.testing.assert_close(masks(p)["2.weight"], w2 > thr)
    pl = prune(net, sparsity=0.5, method="magnitude", scope="layer")
    assert int((~masks(pl)["0.weight"]).sum()) == round(0.5 * w0.numel())
    assert int((~masks(pl)["2.weight"]).sum()) == round(0.5 * w2.numel())
    torch.testing.assert_close(pl[0].bias, net[0].bias)  # biases kept


def test_obd_removes_the_smallest_half_f_w2_without_update():
    """Reference: the diagonal of the brute-force Fisher over the two weights; OBD leaves the kept weights as they were."""
    net, (X, y) = mlp(), data()
    p = prune(net, (X, y), sparsity=0.5, method="obd", damping=0.0)
    F = brute_fisher(net, X).diagonal()
    n0 = net[0].weight.numel()
    sal = 0.5 * F * flat(net) ** 2
    idx0 = torch.arange(n0)
    idx2 = torch.arange(n0 + net[0].bias.numel(), n0 + net[0].bias.numel() + net[2].weight.numel())
    s = torch.cat([sal[idx0], sal[idx2]])
    k = round(0.5 * s.numel())
    removed = torch.zeros(s.numel(), dtype=torch.bool)
    removed[torch.argsort(s)[:k]] = True
    got = torch.cat([~masks(p)["0.weight"].reshape(-1), ~masks(p)["2.weight"].reshape(-1)])
    assert torch.equal(got, removed)
    kept = masks(p)["0.weight"]
    torch.testing.assert_close(p[0].weight[kept], net[0].weight[kept])


def test_woodfisher_one_weight_equals_brute_force_obs_on_the_layer_fisher():
    """One weight removed from layer 2 (block = whole layer): the chosen weight minimises the exact
    quadratic increase ½δᵀ(F+λI)δ over all candidates, and the new layer weights are the KKT minimiser.
    Reference: the layer block of a brute-force (jacrev) Fisher, KKT solves in float64."""
    net, (X, y) = mlp(), data()
    W = net[2].weight.detach().reshape(-1)
    n = W.numel()
    p = prune(net, (X, y), sparsity=1 / n + 1e-9, method="woodfisher", params=["2.weight"], block_size=n,
              damping=1e-3)
    F = brute_fisher(net, X)
    off = sum(q.numel() for q in list(net.parameters())[:2])
    H = F[off : off + n, off : off + n]
    H = H + 1e-3 * H.diagonal().mean() * torch.eye(n, dtype=torch.float64)
    costs = torch.stack([kkt(H, W, [q])[1] for q in range(n)])
    q = int(torch.argmin(costs))
    assert (~masks(p)["2.weight"]).reshape(-1).nonzero().reshape(-1).tolist() == [q]
    delta, _ = kkt(H, W, [q])
    torch.testing.assert_close(p[2].weight.detach().reshape(-1), W + delta, rtol=1e-7, atol=1e-9)


def test_kfac_rows_equal_row_wise_kkt_on_A_with_the_mask_it_chose():
    """For the mask kfac chose, each row of M = [W | b] (bias free) is the KKT minimiser of ½δᵀ(A+λI)δ with the
    row's removed weights at zero; A = mean of [x, 1][x, 1]ᵀ over the data (computed here by hand, layer 1);
    the rows' costs are compared in units of G_oo × that quadratic (checked: equal sparsity per unit cost)."""
    net, (X, y) = mlp(), data()
    p = prune(net, (X, y), sparsity=0.5, method="kfac", damping=1e-2, params=["0.weight"])
    xt = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], 1)
    A = xt.T @ xt / len(X)
    A = A + 1e-2 * A.diagonal().mean() * torch.eye(A.shape[0], dtype=torch.float64)
    M = torch.cat([net[0].weight, net[0].bias[:, None]], 1).detach()
    Mp = torch.cat([p[0].weight, p[0].bias[:, None]], 1).detach()
    mask = masks(p)["0.weight"]
    assert int((~mask).sum()) == round(0.5 * mask.numel())
    for o in range(M.shape[0]):
        Q = (~mask[o]).nonzero().reshape(-1).tolist()
        want = M[o] + kkt(A, M[o], Q)[0] if Q else M[o]
        torch.testing.assert_close(Mp[o], want, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(p[2].weight, net[2].weight)  # layer not in params: untouched


def test_fisher_pruning_keeps_the_model_closer_than_magnitude():
    """The OBS quadratic is a model of the KL: at 70 % sparsity, woodfisher/kfac move the outputs less (mean KL)."""
    net, (X, y) = mlp(), data()
    th = flat(net)
    kl = {m: float(fk.kl_divergence(net, th, flat(prune(net, (X, y), sparsity=0.7, method=m, block_size=16)), (X, y)))
          for m in ("magnitude", "woodfisher", "kfac")}
    assert kl["woodfisher"] < kl["magnitude"] and kl["kfac"] < kl["magnitude"]


def test_masks_stay_applied_while_fine_tuning():
    """SGD with momentum and weight decay, then Adam: masked weights stay exactly 0, the others move."""
    net, (X, y) = mlp(), data()
    p = prune(net, (X, y), sparsity=0.7, method="kfac")
    mask = masks(p)["0.weight"]
    before = p[0].weight.detach().clone()
    for opt in (torch.optim.SGD(p.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2),
                torch.optim.Adam(p.parameters(), lr=1e-2, weight_decay=1e-2)):
        with keep_masked(p, opt):
            for _ in range(5):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(p(X), y).backward()
                assert torch.all(p[0].weight.grad[~mask] == 0)
                opt.step()
                assert torch.all(p[0].weight[~mask] == 0) and torch.all(p[2].weight[~masks(p)["2.weight"]] == 0)
    assert not torch.allclose(p[0].weight[mask], before[mask])


def test_steps_with_finetune_between():
    net, (X, y) = mlp(), data()
    calls = []

    def finetune(model):
        calls.append(fk.prune.sparsity(model))
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for _ in range(3):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(X), y).backward()
            opt.step()  # no step hook here: prune's own guard zeroes the gradients, then re-applies masks

    p = prune(net, (X, y), sparsity=0.8, method="woodfisher", steps=3, finetune=finetune, block_size=16)
    assert len(calls) == 2 and calls[0] < calls[1] < 0.8
    n = sum(m.numel() for m in masks(p).values())
    assert sum(int((~m).sum()) for m in masks(p).values()) == round(0.8 * n)
    for name, m in masks(p).items():
        assert torch.all(dict(p.named_parameters())[name][~m] == 0)


def test_copy_inplace_and_global_rng():
    net, (X, y) = mlp(), data()
    before = flat(net).clone()
    rng = torch.get_rng_state()
    a = prune(net, (X, y), sparsity=0.5, method="obd", kind="mc", generator=torch.Generator().manual_seed(0))
    b = prune(net, (X, y), sparsity=0.5, method="obd", kind="mc", generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(flat(net), before) and torch.equal(flat(a), flat(b))
    c = prune(net, (X, y), sparsity=0.5, method="kfac", update=False)
    kept = masks(c)["0.weight"]
    torch.testing.assert_close(c[0].weight[kept], net[0].weight[kept])  # no update: kept weights as they were
    d = prune(net, (X, y), sparsity=0.5, method="kfac", inplace=True)
    assert d is net and torch.all(net[0].weight[~masks(net)["0.weight"]] == 0)


@pytest.mark.parametrize("kw,match", [
    (dict(sparsity=1.0), r"\[0, 1\)"), (dict(sparsity=-0.1), r"\[0, 1\)"), (dict(sparsity=float("nan")), r"\[0, 1\)"),
    (dict(method="random"), "unknown method"), (dict(scope="net"), "scope"), (dict(steps=0), "steps"),
    (dict(block_size=0), "block_size"), (dict(damping=-1), "damping"), (dict(params=["0.bias"]), "not the weight"),
    (dict(params=["nope"]), "not a parameter"), (dict(data=None), "needs data"), (dict(finetune=3), "callable"),
])
def test_bad_input_raises_before_work(kw, match):
    net = mlp()
    before = flat(net).clone()

    class Boom:
        def __iter__(self):
            raise AssertionError("data was read")

    args = dict(data=Boom(), sparsity=0.5, method="kfac")
    args.update(kw)
    with pytest.raises(PruneError, match=match):
        prune(net, **args)
    assert torch.equal(flat(net), before)
    assert issubclass(PruneError, FisherkitError)


def test_wrong_fisher_structure_is_refused():
    net, (X, y) = mlp(), data()
    F = fk.fisher(net, (X, y), structure="diag")
    with pytest.raises(PruneError, match="'kfac' Fisher"):
        prune(net, sparsity=0.5, method="kfac", fisher=F)
    p = prune(net, sparsity=0.5, method="obd", fisher=F)  # the right one is used as given
    assert fk.prune.sparsity(p) == pytest.approx(0.5, abs=0.01)
