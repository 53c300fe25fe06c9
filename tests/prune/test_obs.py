"""OBS maths against brute force: the constrained quadratic minimum solved as a KKT system in float64."""

import torch

from fisherkit.prune import greedy, obs_set, obs_single, replay

from .conftest import kkt, spd


def test_single_removal_update_and_saliency_equal_constrained_minimum():
    """δ = −w_q H⁻¹e_q/[H⁻¹]_qq and w_q²/(2[H⁻¹]_qq) equal the KKT minimiser and its quadratic increase."""
    H = spd(7)
    w = torch.randn(7, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    Hinv = torch.linalg.inv(H)
    for q in range(7):
        delta, sal = obs_single(Hinv, w, q)
        d_ref, inc_ref = kkt(H, w, [q])
        torch.testing.assert_close(delta, d_ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(sal, inc_ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(sal, 0.5 * delta @ H @ delta, rtol=1e-10, atol=1e-12)


def test_joint_removal_equals_constrained_minimum():
    H = spd(8, seed=1)
    w = torch.randn(8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    for Q in ([0, 3], [1, 2, 7], [0, 1, 2, 3, 4]):
        delta, inc = obs_set(torch.linalg.inv(H), w, Q)
        d_ref, inc_ref = kkt(H, w, Q)
        torch.testing.assert_close(delta, d_ref, rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(inc, inc_ref, rtol=1e-9, atol=1e-11)


def test_greedy_sequence_reaches_the_joint_optimum_and_picks_the_cheapest():
    """Sequential OBS removals with H⁻¹ downdates end at the KKT optimum for the removed set, their
    increases add up to its quadratic increase, and each step removes the weight whose exact (KKT)
    removal, given the ones already removed, costs least (checked by enumerating every candidate)."""
    m = 6
    H = spd(m, seed=2)
    w = torch.randn(m, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    Hinv = torch.linalg.inv(H)[None]
    prunable = torch.ones(1, m, dtype=torch.bool)
    order, inc = greedy(Hinv, w[None], prunable)
    done = []
    for t in range(m - 1):
        base = kkt(H, w, done)[1] if done else torch.tensor(0.0, dtype=torch.float64)
        costs = {q: float(kkt(H, w, done + [q])[1] - base) for q in range(m) if q not in done}
        best = min(costs, key=costs.get)
        assert int(order[0, t]) == best
        torch.testing.assert_close(float(inc[0, t]), costs[best], rtol=1e-8, atol=1e-12)
        done.append(best)
        k = len(done)
        new = replay(Hinv, w[None], order, torch.tensor([k]))[0]
        d_ref, total = kkt(H, w, done)
        torch.testing.assert_close(new, w + d_ref, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(float(inc[0, :k].sum()), float(total), rtol=1e-8, atol=1e-12)


def test_unprunable_coordinates_are_updated_but_never_removed():
    m = 5
    H = spd(m, seed=3)
    w = torch.randn(m, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    prunable = torch.tensor([[True, True, True, True, False]])
    order, inc = greedy(torch.linalg.inv(H)[None], w[None], prunable)
    assert 4 not in order[0].tolist() and order.shape[1] == 4
    new = replay(torch.linalg.inv(H)[None], w[None], order, torch.tensor([4]))[0]
    d_ref, _ = kkt(H, w, [0, 1, 2, 3])
    torch.testing.assert_close(new, w + d_ref, rtol=1e-8, atol=1e-10)
    assert new[4] != w[4]


def test_forced_coordinates_go_first_at_no_cost():
    H = spd(4, seed=4)
    w = torch.tensor([0.0, 1.0, -2.0, 0.5], dtype=torch.float64)
    forced = torch.tensor([[False, False, True, False]])
    order, inc = greedy(torch.linalg.inv(H)[None], w[None], torch.ones(1, 4, dtype=torch.bool), forced)
    assert int(order[0, 0]) == 2 and inc[0, 0] == -float("inf")
