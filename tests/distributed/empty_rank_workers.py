"""Ranks with an empty local batch under DDP with uneven data (spawned by test_empty_rank.py).

Every step has a global batch of GLOBAL[t] samples split unevenly over 2 ranks; at step 1 rank 1
gets none. Each rank's loss is its sum over samples × world / global size, so that DDP's gradient
average is the mean gradient of the global batch — what one process computes on the whole batch.
"""

from __future__ import annotations

import torch

import dist_workers as w

CONFIGS = [("kfac", "exact"), ("ekfac", "exact"), ("diag", "exact"), ("implicit", "exact")]  # exact: MC labels differ per rank
SPLITS = [(5, 4), (6, 0), (3, 5)]  # per step: samples of rank 0, rank 1 (step 1: rank 1 empty)
WORLD = 2


def data(seed: int = 7):
    g = torch.Generator().manual_seed(seed)
    n = [a + b for a, b in SPLITS]
    return ([torch.randn(k, 4, generator=g, dtype=torch.float64) for k in n],
            [torch.randint(0, 3, (k,), generator=g) for k in n])


def train(config, rank: int = 0, world: int = 1) -> torch.Tensor:
    import warnings

    import fisherkit as fk

    structure, kind = config
    model, _, _ = w.model_and_data()
    net = model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # kfac's diagonal fallback for the LayerNorm
        opt = fk.optim.NaturalGradient(model, lr=0.2, structure=structure, kind=kind, update_every=1, ema=0.9,
                                       damping=1e-2, cg_iters=200, generator=5)
        opt.pre.cg_tol = 1e-13  # CG to convergence: the ranks and the reference differ in summation order only
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model)
    Xs, ys = data()
    for t, (a, b) in enumerate(SPLITS):
        lo, hi = (0, a + b) if world == 1 else ((0, a) if rank == 0 else (a, a + b))
        xb, yb = Xs[t][lo:hi], ys[t][lo:hi]
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(xb), yb, reduction="sum") * world / (a + b)
        loss.backward()
        opt.step()
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def worker(rank: int, world: int, port: int, outdir: str) -> None:
    from safetensors.torch import save_file

    w.init(rank, world, port)
    try:
        out = {f"c{i}": train(c, rank, world) for i, c in enumerate(CONFIGS)}
        save_file(out, f"{outdir}/empty{rank}.safetensors")
    finally:
        torch.distributed.destroy_process_group()
