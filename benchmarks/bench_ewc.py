"""EWC costs on the PermutedDigits network (MLP 64-256-256-10, 1,347 training digits, float32, 1 thread).

* consolidate(): time to compute a task's Fisher (each kind / structure), as a ratio to one plain
  forward+backward epoch over the same data (batch 128), timed in the same run;
* penalty(): extra time per training step (batch 64) with 1 and 10 consolidated tasks, as a ratio
  to a plain step (forward, backward, Adam).

    python benchmarks/bench_ewc.py            # ~1 minute on 2 shared cores
"""

from __future__ import annotations

import time

import torch

from fisherkit.continual import EWC, PermutedDigits

torch.set_num_threads(1)


def best_of(fn, repeat=3):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    stream = PermutedDigits(2, seed=0)
    model = stream.make_model((256, 256), seed=0)
    X, y = stream[0].train
    opt = torch.optim.Adam(model.parameters(), 1e-3)

    def epoch():
        for s in range(0, X.shape[0], 128):
            model.zero_grad()
            torch.nn.functional.cross_entropy(model(X[s : s + 128]), y[s : s + 128]).backward()

    base = best_of(epoch)
    print(f"plain epoch (batch 128): {1e3 * base:.1f} ms")
    print(f"{'consolidate':<34}{'ms':>8}{'× epoch':>9}")
    for kind, structure in [("exact", "diag"), ("mc", "diag"), ("empirical", "diag"),
                            ("squared_batch_mean", "diag"), ("exact", "kfac"), ("mc", "kfac")]:
        ewc = EWC(model, lam=1.0, kind=kind, structure=structure, batch_size=128)
        t = best_of(lambda: ewc.compute_fisher((X, y), generator=torch.Generator().manual_seed(0)))
        print(f"{kind + ' / ' + structure:<34}{1e3 * t:8.1f}{t / base:9.2f}")

    xb, yb = X[:64], y[:64]

    def step(pen=None):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        if pen is not None:
            loss = loss + pen()
        loss.backward()
        opt.step()

    def steps(pen=None, n=50):
        for _ in range(n):
            step(pen)

    plain = best_of(steps) / 50
    print(f"\nplain training step (batch 64): {1e3 * plain:.2f} ms")
    print(f"{'penalty':<34}{'ms/step':>8}{'× step':>9}")
    for structure, mode, tasks in [("diag", "separate", 1), ("diag", "separate", 10), ("diag", "online", 10),
                                   ("kfac", "separate", 1), ("kfac", "separate", 10)]:
        ewc = EWC(model, lam=1.0, structure=structure, mode=mode)
        F_data = (X[:256], y[:256])
        for _ in range(tasks):
            ewc.consolidate(F_data)
        t = best_of(lambda: steps(ewc.penalty)) / 50
        print(f"{structure + ' ' + mode + f' ({tasks} task' + ('s)' if tasks > 1 else ')'):<34}"
              f"{1e3 * (t - plain):8.2f}{(t - plain) / plain:9.2f}")


if __name__ == "__main__":
    main()
