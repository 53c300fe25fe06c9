"""fisherkit under torch.distributed: throughput of fisher(...) and of NaturalGradient steps, 1 vs 2 ranks.

Each configuration runs in freshly spawned processes (gloo, CPU, one thread per rank):

* ``fisher``: an MLP 32-32-32-10 (2,442 parameters, float32) on N samples; 1 rank holds all N,
  2 ranks hold N/2 each. Reported: seconds per call, samples/s, speed-up, and the payload this rank
  puts into collectives per call (bytes all-reduced / broadcast; all-gathered signatures ≈ 256 B).
* ``ngd``: NaturalGradient on an MLP 64-384-384-10 with a global batch of 256 (2 ranks: DDP, 128
  each), update_every=1, inv_every=1 (every step refreshes the eigendecompositions, the case where
  splitting them over ranks matters), for ``split_inverses`` True and False. Reported: seconds per
  step and fisherkit's payload per step (DDP's own gradient all-reduce, 4·P bytes, is extra).

Besides wall-clock time, rank 0's CPU time per call is recorded: its share of the work, which a
loaded machine does not inflate the way it inflates wall time.

Run:  python benchmarks/bench_distributed.py [--quick] [--out results.json]
Timings on a shared 2-core machine are noisy; the load average is recorded with the results.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import sys
import tempfile
import time
import warnings

import torch
from torch import nn

STRUCTURES = ["diag", "kfac", "ekfac", "block", "dense", "lowrank", "implicit_mv", "fvp"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mlp(sizes, seed=0):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers[:-1])


def _data(n, d, classes, seed=1):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return X, y


def _timed(fn, reps, barrier):
    import fisherkit.distributed as fd

    fn()  # warm-up
    fd.reset_traffic()
    barrier()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(reps):
        fn()
    cpu = (time.process_time() - c0) / reps  # this rank's CPU time: its share of the work, whatever the load
    barrier()
    sec = (time.perf_counter() - t0) / reps
    return sec, cpu, fd.traffic["bytes"] / reps, fd.traffic["collectives"] / reps


def _fisher_bench(rank, world, cfg):
    import fisherkit as fk

    model = _mlp([32, 32, 32, 10])
    X, y = _data(cfg["n"], 32, 10)
    per = cfg["n"] // world
    data = (X[rank * per:(rank + 1) * per], y[rank * per:(rank + 1) * per])
    v = torch.randn(sum(p.numel() for p in model.parameters()), generator=torch.Generator().manual_seed(2))
    barrier = torch.distributed.barrier
    out = {}
    for s in STRUCTURES:
        if s == "implicit_mv":
            F = fk.fisher(model, data, structure="implicit", batch_size=256)
            fn = lambda F=F: F.mv(v)  # noqa: E731
        elif s == "fvp":
            fn = lambda: fk.fvp(model, data, v, batch_size=256)  # noqa: E731
        else:
            fn = lambda s=s: fk.fisher(model, data, structure=s, kind="mc", batch_size=256, rank=20,  # noqa: E731
                                       generator=torch.Generator().manual_seed(0))
        sec, cpu, nbytes, ncoll = _timed(fn, cfg["reps"], barrier)
        out[s] = {"seconds": sec, "cpu_seconds": cpu, "samples_per_s": cfg["n"] / sec, "bytes_per_call": nbytes,
                  "collectives_per_call": ncoll}
    return out


def _ngd_bench(rank, world, cfg):
    import fisherkit as fk
    import fisherkit.distributed as fd

    X, y = _data(cfg["batch"] * (cfg["steps"] + 2), 64, 10, seed=3)
    per = cfg["batch"] // world
    out = {}
    for structure, split in (("kfac", True), ("kfac", False), ("ekfac", True), ("ekfac", False)):
        if world == 1 and not split:
            continue  # the switch only matters with several ranks
        model = _mlp([64, 384, 384, 10], seed=5)
        net = model
        opt = fk.optim.NaturalGradient(model, lr=0.05, structure=structure, kind="mc", update_every=1, inv_every=1)
        if world > 1:
            net = nn.parallel.DistributedDataParallel(model)
            opt = fd.distribute_optimizer(opt, split_inverses=split)
        it = iter(range(cfg["steps"] + 2))

        def step():
            t = next(it)
            lo = t * cfg["batch"] + rank * per
            opt.zero_grad()
            nn.functional.cross_entropy(net(X[lo:lo + per]), y[lo:lo + per]).backward()
            opt.step()

        sec, cpu, nbytes, ncoll = _timed(step, cfg["steps"], torch.distributed.barrier)
        out[f"{structure}_split{split}"] = {"seconds_per_step": sec, "cpu_seconds_per_step": cpu, "bytes_per_step": nbytes,
                                           "collectives_per_step": ncoll,
                                           "ddp_grad_bytes": 4 * sum(p.numel() for p in model.parameters())}
    return out


def _worker(rank, world, port, cfg, outdir):
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                         world_size=world, timeout=datetime.timedelta(seconds=600))
    res = {"fisher": _fisher_bench(rank, world, cfg), "ngd": _ngd_bench(rank, world, cfg)}
    if rank == 0:
        with open(os.path.join(outdir, f"world{world}.json"), "w") as f:
            json.dump(res, f)
    torch.distributed.destroy_process_group()


def run(quick: bool = False) -> dict:
    import torch.multiprocessing as mp

    cfg = {"n": 1024 if quick else 4096, "reps": 2 if quick else 3, "batch": 256, "steps": 3 if quick else 8}
    results = {"config": cfg, "load_average_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as d:
        for world in (1, 2):
            mp.spawn(_worker, args=(world, _free_port(), cfg, d), nprocs=world, join=True)
            with open(os.path.join(d, f"world{world}.json")) as f:
                results[f"world{world}"] = json.load(f)
    results["load_average_after"] = os.getloadavg()
    one, two = results["world1"], results["world2"]
    results["fisher_speedup"] = {s: one["fisher"][s]["seconds"] / two["fisher"][s]["seconds"] for s in STRUCTURES}
    results["ngd_speedup"] = {k: one["ngd"][k]["seconds_per_step"] / two["ngd"][k]["seconds_per_step"]
                              for k in one["ngd"]}
    return results


def _table(res) -> str:
    one, two = res["world1"], res["world2"]
    lines = [f"fisher(...), N={res['config']['n']}, MLP 32-32-32-10 (2,442 params, float32, kind='mc' for the stored ones)",
             f"{'structure':12s} {'1 rank s':>9s} {'2 ranks s':>9s} {'speed-up':>8s} {'CPU s 1':>8s} {'CPU s 2':>8s} "
             f"{'samples/s (2)':>13s} {'bytes/call/rank':>15s} {'collectives':>11s}"]
    for s in STRUCTURES:
        a, b = one["fisher"][s], two["fisher"][s]
        lines.append(f"{s:12s} {a['seconds']:9.3f} {b['seconds']:9.3f} {res['fisher_speedup'][s]:8.2f} "
                     f"{a['cpu_seconds']:8.3f} {b['cpu_seconds']:8.3f} "
                     f"{b['samples_per_s']:13.0f} {b['bytes_per_call']:15.0f} {b['collectives_per_call']:11.1f}")
    lines.append("NaturalGradient, MLP 64-384-384-10, global batch 256, update_every=inv_every=1, kind='mc'")
    lines.append(f"{'config':20s} {'1 rank s/step':>13s} {'2 ranks s/step':>14s} {'speed-up':>8s} {'CPU s 1':>8s} "
                 f"{'CPU s 2':>8s} {'bytes/step':>11s} {'DDP grad bytes':>14s}")
    for k, b in two["ngd"].items():
        base = one["ngd"].get(k.replace("splitFalse", "splitTrue"))
        lines.append(f"{k:20s} {base['seconds_per_step']:13.3f} {b['seconds_per_step']:14.3f} "
                     f"{base['seconds_per_step'] / b['seconds_per_step']:8.2f} {base['cpu_seconds_per_step']:8.3f} "
                     f"{b['cpu_seconds_per_step']:8.3f} {b['bytes_per_step']:11.0f} "
                     f"{b['ddp_grad_bytes']:14d}")
    lines.append(f"load average before/after: {res['load_average_before']} / {res['load_average_after']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller N and fewer repetitions")
    p.add_argument("--out", help="write the results as JSON here")
    a = p.parse_args(argv)
    res = run(quick=a.quick)
    print(_table(res))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
