"""Code that runs inside the spawned ranks (gloo, CPU) and the shared model / data / spawner.

Each worker writes what it computed to files in a folder the test gives it; the test compares them
with the same computation done in one process over the whole data.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import time

import torch
from torch import nn

SHARDS = {1: [(0, 20)], 2: [(0, 13), (13, 20)], 3: [(0, 9), (9, 9), (9, 20)]}  # uneven; one empty


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init(rank: int, world: int, port: int, timeout: float = 60.0) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                         world_size=world, timeout=datetime.timedelta(seconds=timeout))


def spawn(fn, world: int, args: tuple, timeout: float = 120.0) -> None:
    """Run ``fn(rank, world, *args)`` in ``world`` fresh processes; fail (never hang) after ``timeout``."""
    spawn_many([(fn, world, args)], timeout)


def spawn_many(jobs: list, timeout: float = 120.0) -> None:
    """Several spawned groups at once (their slow imports overlap); each job is (fn, world, args)."""
    import torch.multiprocessing as mp

    ctxs = [mp.start_processes(fn, args=(world, *args), nprocs=world, join=False, start_method="spawn")
            for fn, world, args in jobs]
    deadline = time.monotonic() + timeout
    pending = list(ctxs)
    while pending:
        pending = [c for c in pending if not c.join(timeout=0.5)]
        if pending and time.monotonic() > deadline:
            for c in ctxs:
                for p in c.processes:
                    if p.is_alive():
                        p.kill()
            raise TimeoutError(f"spawned ranks did not finish within {timeout} s")


MC_SAME_DATA = 64  # labels per point of the "mc_same_data" result: its spread is small enough to see a bias


def model_and_data(n: int = 20, seed: int = 0):
    """A float64 MLP with a LayerNorm (hooks for Linear, torch.func for the norm) and its data."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 3)).double()
    g = torch.Generator().manual_seed(seed + 1)
    X = torch.randn(n, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    return model, X, y


def probe_vector(model) -> torch.Tensor:
    p = sum(q.numel() for q in model.parameters())
    return torch.randn(p, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def fisher_results(model, X, y, process_group=None) -> dict[str, torch.Tensor]:
    """Every structure (and the products) on ``(X, y)``, as tensors keyed by what they are."""
    import warnings

    import fisherkit as fk

    data = (X, y)
    v = probe_vector(model)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # kfac's fallback warning for the LayerNorm
        for structure in ("dense", "diag", "block", "kfac", "ekfac"):
            F = fk.fisher(model, data, structure=structure, batch_size=4, process_group=process_group)
            out[structure] = F.to_dense()
            out[structure + "_n"] = torch.tensor(F.num_samples)
        out["empirical_kfac"] = fk.fisher(model, data, kind="empirical", structure="kfac", batch_size=4,
                                          process_group=process_group).to_dense()
        low = fk.fisher(model, data, structure="lowrank", rank=5, batch_size=4, process_group=process_group)
        out["lowrank"] = low.to_dense()
        # matrix-free ones: one batch per shard keeps the many products cheap
        lanczos = fk.fisher(model, data, structure="lowrank", rank=3, batch_size=20, max_memory=20_000,
                            process_group=process_group)  # too big for the dense Gram: Lanczos
        out["lanczos_vals"] = lanczos.eig(3)[0]
        out["lanczos_dense"] = lanczos.to_dense()
        imp = fk.fisher(model, data, structure="implicit", batch_size=20, process_group=process_group)
        out["implicit_mv"] = imp.mv(v)
        out["implicit_solve"] = imp.solve(v, 1.0, tol=1e-12)
        out["fvp"] = fk.fvp(model, data, v, batch_size=4, process_group=process_group)
    return out


def _save(path: str, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file({k: t.contiguous() for k, t in tensors.items()}, path)


def fisher_worker(rank: int, world: int, port: int, outdir: str) -> None:
    """All structures on this rank's shard; in the two-rank run also the error paths."""
    import fisherkit as fk

    init(rank, world, port)
    model, X, y = model_and_data()
    a, b = SHARDS[world][rank]
    out = fisher_results(model, X[a:b], y[a:b])
    mc = fk.fisher(model, (X[a:b], None), kind="mc", structure="diag", generator=torch.Generator().manual_seed(5))
    out["mc_diag"] = mc.diag()
    # the whole data on every rank, one seed: rank-derived streams must still give one shared result
    out["mc_same_data"] = fk.fisher(model, (X, None), kind="mc", structure="diag", mc_samples=MC_SAME_DATA,
                                    generator=torch.Generator().manual_seed(5)).diag()
    _save(os.path.join(outdir, f"rank{rank}.safetensors"), out)
    if world == 3:
        _lose_a_rank(rank, outdir)
    if world == 2:
        notes = {}
        names = [n for n, _ in model.named_parameters()]
        try:  # rank 1 asks for a different parameter set: both ranks must refuse
            fk.fisher(model, (X[a:b], y[a:b]), params=names[:2] if rank == 1 else None)
            notes["mismatch"] = "no error"
        except fk.errors.FisherkitError as e:
            notes["mismatch"] = f"{type(e).__name__}: {e}"
        bad = y[a:b].clone()
        if rank == 1:
            bad[0] = 7  # out of range for 3 classes: rank 1 fails while reading its shard
        try:
            fk.fisher(model, (X[a:b], bad), kind="empirical")
            notes["failure"] = "no error"
        except fk.errors.FisherkitError as e:
            notes["failure"] = f"{type(e).__name__}: {e}"
        # the group is still in step afterwards
        notes["after"] = float(fk.fisher(model, (X[a:b], y[a:b]), structure="diag").trace())
        with open(os.path.join(outdir, f"notes{rank}.json"), "w") as f:
            json.dump(notes, f)
        optim_results(rank, world, outdir)  # same spawn: processes are slow to start
    torch.distributed.destroy_process_group()



def _lose_a_rank(rank: int, outdir: str, timeout: float = 5.0) -> None:
    """A group with a 5 s timeout; rank 2 stops answering (stuck, then gone: a crash, a kill, an early
    return) and ranks 0 and 1 ask for a Fisher over that group: a clear error, not a hang."""
    import fisherkit as fk

    short = torch.distributed.new_group([0, 1, 2], timeout=datetime.timedelta(seconds=timeout))
    torch.distributed.barrier(group=short)
    if rank == 2:
        time.sleep(2 * timeout)  # stuck past the timeout, then gone
        os._exit(0)
    model, X, y = model_and_data()
    t0 = time.monotonic()
    try:
        fk.fisher(model, (X, y), structure="kfac", process_group=short)
        result = {"error": None}
    except Exception as e:  # noqa: BLE001 - the test checks the type
        result = {"type": type(e).__name__, "error": str(e), "is_fisherkit": isinstance(e, fk.errors.FisherkitError)}
    result["seconds"] = time.monotonic() - t0
    with open(os.path.join(outdir, f"lost{rank}.json"), "w") as f:
        json.dump(result, f)
    os._exit(0)  # no destroy_process_group: a peer is gone


# ---- NaturalGradient and EWC -------------------------------------------------------------------
NG_CONFIGS = [  # (structure, kind, split_inverses, extra options)
    ("kfac", "exact", True, {}),
    ("kfac", "exact", False, {}),
    ("ekfac", "exact", True, {}),
    ("ekfac", "exact", False, {}),
    ("diag", "exact", True, {}),
    ("dense", "exact", True, {}),
    ("implicit", "exact", True, {"cg_iters": 200, "damping": 0.1}),  # CG to convergence (test_optim_distributed)
    ("kfac", "empirical", True, {"kl_clip": 1e-3, "momentum": 0.5}),
    ("kfac", "exact", True, {"adaptive_damping": True, "lm_every": 1}),  # step(closure): mean loss over ranks
    ("ekfac", "exact", True, {"no_ddp": True}),  # gradients averaged by distribute_optimizer instead of DDP
]
NG_STEPS, NG_BATCH = 5, 16


def ng_data(seed: int = 4):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(NG_STEPS, NG_BATCH, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (NG_STEPS, NG_BATCH), generator=g)
    return X, y


def train_ng(config, rank: int = 0, world: int = 1) -> torch.Tensor:
    """NaturalGradient for NG_STEPS steps; distributed: DDP, each rank 1/world of every global batch."""
    import warnings

    import fisherkit as fk
    from fisherkit.distributed import distribute_optimizer

    structure, kind, split, extra = config
    extra = dict(extra)
    no_ddp = extra.pop("no_ddp", False)
    model, _, _ = model_and_data()
    X, y = ng_data()
    net = model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # kfac's diagonal fallback for the LayerNorm
        opt = fk.optim.NaturalGradient(model, lr=0.2, structure=structure, kind=kind, update_every=1, inv_every=2,
                                       ema=0.9, **{"damping": 1e-2, **extra})
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = model if no_ddp else DistributedDataParallel(model)
        opt = distribute_optimizer(opt, split_inverses=split, average_gradients=no_ddp)
    per = NG_BATCH // world
    for t in range(NG_STEPS):
        xb, yb = X[t, rank * per:(rank + 1) * per], y[t, rank * per:(rank + 1) * per]

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(xb), yb)
            loss.backward()
            return loss

        if extra.get("adaptive_damping"):
            opt.step(closure)
        else:
            closure()
            opt.step()
    if extra.get("adaptive_damping"):  # the damping moved, the same way on every rank
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()] + [torch.tensor([opt.damping])])
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def ewc_penalties(rank: int = 0, world: int = 1) -> torch.Tensor:
    """EWC (diag and kfac) consolidated on this rank's shard of two tasks; penalties at a displaced θ."""
    import fisherkit as fk

    model, X, y = model_and_data()
    out = []
    for structure in ("diag", "kfac", "ekfac"):
        ewc = fk.continual.EWC(model, lam=3.0, structure=structure, mode="online", gamma=0.7)
        for task in range(2):
            a, b = SHARDS[world][rank]
            ewc.consolidate((X[a:b] + task, y[a:b]))
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.05 * torch.sin(torch.arange(p.numel(), dtype=p.dtype) + task).reshape(p.shape))
        out.append(ewc.penalty().detach().reshape(1))
    return torch.cat(out)


def optim_results(rank: int, world: int, outdir: str) -> None:
    out = {f"ng{i}": train_ng(c, rank, world) for i, c in enumerate(NG_CONFIGS)}
    out["ewc"] = ewc_penalties(rank, world)
    _save(os.path.join(outdir, f"optim{rank}.safetensors"), out)
