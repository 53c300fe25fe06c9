"""Peak memory per method, each measured in a fresh process, and the 10M-parameter streaming check.

A probe runs ``python benchmarks/bench_fisher.py --probe MODEL:METHOD``: it builds the model and
data, resets the kernel's peak-RSS mark (``/proc/self/clear_refs``), runs the method once and
reports the peak resident set size above the level before the method (``VmHWM`` − RSS before).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from common import BATCH, CLASSES, big_mlp, batches, build, rss_bytes

HERE = Path(__file__).resolve().parent
FISHERKIT = {
    "diag_exact": ("exact", "diag"), "diag_mc": ("mc", "diag"), "diag_emp": ("empirical", "diag"),
    "kfac_exact": ("exact", "kfac"), "kfac_mc": ("mc", "kfac"),
}
PEER = {"bp_diag_exact": "DiagGGNExact", "bp_kflr": "KFLR", "bp_kfac": "KFAC", "bp_sgs": "SumGradSquared"}


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _plain_step(model, X, y):
    # a hand-written SGD step: torch.optim's first step imports torch._dynamo, whose memory is not the step's
    nn.functional.cross_entropy(model(X[:BATCH]), y[:BATCH]).backward()
    with torch.no_grad():
        for p in model.parameters():
            p.sub_(p.grad, alpha=1e-3)
            p.grad = None


def _backpack(model, X, y, ext_name):
    from backpack import backpack, extend
    from backpack import extensions as E

    m = extend(copy.deepcopy(model))
    lossf = extend(nn.CrossEntropyLoss(reduction="sum"))
    for x, t in batches(X, y):
        m.zero_grad()
        with backpack(getattr(E, ext_name)()):
            lossf(m(x), t).backward()


def probe(spec: str, quick: bool) -> dict:
    """Run one measurement in this (fresh) process; ``spec`` is ``MODEL:METHOD`` or ``stream:STRUCTURE:N``."""
    import fisherkit as fk

    if spec.startswith("stream:"):
        _, structure, n = spec.split(":")
        return _stream(structure, int(n))
    name, method = spec.split(":")
    model, X, y = build(name, 512 if quick else None)
    # warm the process up (autograd engine, BLAS and allocator pools) on a tiny model, so that one-off
    # start-up allocations are not charged to whichever method happens to run first
    tiny = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    nn.functional.cross_entropy(tiny(torch.randn(4, 8)), torch.tensor([0, 1, 0, 1])).backward()
    fk.fisher(tiny, (torch.randn(4, 8), torch.tensor([0, 1, 0, 1])), structure="kfac")
    run = None
    if method == "plain_step":
        run = lambda: _plain_step(model, X, y)  # noqa: E731
    elif method in FISHERKIT:
        kind, structure = FISHERKIT[method]
        run = lambda: fk.fisher(model, (X, y), kind=kind, structure=structure, batch_size=BATCH,  # noqa: E731
                                generator=torch.Generator().manual_seed(0))
    elif method in PEER:
        run = lambda: _backpack(model, X, y, PEER[method])  # noqa: E731
    else:
        raise ValueError(f"unknown memory probe {spec!r}")
    before = rss_bytes()
    exact = _reset_peak()
    t0 = time.perf_counter()
    res = run()
    del res
    return dict(spec=spec, peak_above_start=_peak() - before, rss_before=before, seconds=time.perf_counter() - t0,
                exact_peak=exact)


def _stream(structure: str, n: int) -> dict:
    """Fisher (mc) of the 10M-parameter MLP over ``n`` generated samples; RSS sampled after every batch."""
    import fisherkit as fk

    model = big_mlp().eval()
    rss = []

    def data():
        g = torch.Generator().manual_seed(7)
        for s in range(0, n, BATCH):
            b = min(BATCH, n - s)
            rss.append(rss_bytes())
            yield torch.randn(b, 784, generator=g), torch.randint(0, CLASSES, (b,), generator=g)

    t0 = time.perf_counter()
    F = fk.fisher(model, data(), kind="mc", structure=structure, generator=torch.Generator().manual_seed(0))
    secs = time.perf_counter() - t0
    k = max(1, len(rss) // 10)
    early, late = max(rss[1 : k + 1] or rss[:1]), max(rss[-k:])
    return dict(structure=structure, samples=n, params=sum(p.numel() for p in model.parameters()),
                batches=len(rss), seconds=secs, rss_first_tenth=early, rss_last_tenth=late,
                rss_max=max(rss), growth=late - early, finite=bool(torch.isfinite(F.diag()).all()))


def run_probe(spec: str, quick: bool) -> dict:
    cmd = [sys.executable, str(HERE / "bench_fisher.py"), "--probe", spec] + (["--quick"] if quick else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_section(quick: bool, no_peers: bool, log) -> dict:
    """Peak memory of M2's plain training step vs fisherkit's diag / kfac (and BackPACK's), each in its own process."""
    specs = ["plain_step"] + list(FISHERKIT)
    if not no_peers:
        try:
            import backpack  # noqa: F401

            specs += list(PEER)
        except ImportError:
            pass
    log(f"\nPeak memory on M2 ({'512' if quick else '4,096'} samples), MiB above the process before the call:")
    res = {}
    for s in specs:
        r = run_probe(f"M2:{s}", quick)
        res[s] = r
    base = res["plain_step"]["peak_above_start"]
    for s, r in res.items():
        r["ratio_plain_step"] = r["peak_above_start"] / base
        target = 2.0 if s in FISHERKIT else None
        r["target"] = target
        r["met"] = None if target is None else r["ratio_plain_step"] <= target
        log(f"  {s:<14} {r['peak_above_start'] / 2**20:8.1f} MiB  {r['ratio_plain_step']:5.2f}× a training step"
            + ("" if target is None else f"  (target ≤ 2: {'ok' if r['met'] else 'MISSED'})"))
    return res


def streaming(n: int, log, quick: bool) -> dict:
    log(f"\nStreaming: 10M-parameter MLP (784-3000-2500-10), {n:,} generated samples, batch {BATCH}, kind=mc")
    out = {}
    for structure in ("diag", "kfac"):
        r = run_probe(f"stream:{structure}:{n}", quick)
        out[structure] = r
        log(f"  {structure:<5} {r['seconds']:7.1f} s, RSS first tenth {r['rss_first_tenth'] / 2**20:.0f} MiB, "
            f"last tenth {r['rss_last_tenth'] / 2**20:.0f} MiB (growth {r['growth'] / 2**20:+.1f} MiB)")
    return out
