"""The continual-learning loop: train on each task in turn, fill the accuracy matrix, summarise.

Every method runs in the *same* loop with the same optimiser (Adam, fresh per task), epochs,
batch size and seed-dependent model initialisation and shuffling; only its penalty / hooks differ.
``run_stream`` repeats this over seeds and returns means and spreads of the metrics.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..errors import FisherkitError
from ..continual import metrics
from ..continual.baselines import DEFAULT_STRENGTH, make_method
from ..continual.streams import make_stream

# stream -> default strengths, chosen once from single-seed λ sweeps (seed 0; see docs/continual.md)
_SPLIT = {"l2": 0.1, "si": 10.0, "ewc": 1000.0}
STRENGTHS = {
    "permuted": {"l2": 0.1, "si": 10.0, "ewc": 100.0, "ewc-online": 300.0, "ewc-kfac": 10.0},
    "rotated": {"l2": 0.1, "si": 10.0, "ewc": 100.0, "ewc-online": 300.0},
    "split-task": _SPLIT, "split-domain": _SPLIT, "split-class": _SPLIT,
}


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 3e-3
    hidden: tuple[int, ...] = (256, 256)


QUICK = {"epochs": 3}


def _loss(model, X, y, h):
    """Mean cross-entropy of a batch whose rows may belong to different heads (joint task-IL)."""
    heads = torch.unique(h)
    if len(heads) == 1:
        model.task = int(heads[0])
        return torch.nn.functional.cross_entropy(model(X), y)
    total = 0.0
    for k in heads.tolist():
        m = h == k
        model.task = int(k)
        total = total + torch.nn.functional.cross_entropy(model(X[m]), y[m], reduction="sum")
    return total / X.shape[0]


def train_task(model, stream, t, method, cfg: TrainConfig, generator: torch.Generator) -> None:
    """Train ``model`` on task t (on tasks 0..t if ``method.joint``) with the method's hooks."""
    stream.prepare(model, t)
    method.before_task(model, stream, t)
    seen = stream.tasks[: t + 1] if method.joint else [stream[t]]
    X = torch.cat([s.X_train for s in seen])
    y = torch.cat([s.y_train for s in seen])
    h = torch.cat([torch.full((len(s.y_train),), s.head) for s in seen])
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    model.train()
    for _ in range(cfg.epochs):
        perm = torch.randperm(X.shape[0], generator=generator)
        for s in range(0, X.shape[0], cfg.batch_size):
            idx = perm[s : s + cfg.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = _loss(model, X[idx], y[idx], h[idx])
            loss.backward()
            method.after_backward(model)
            stream.select(model, t)
            pen = method.penalty(model)
            if pen is not None and pen.requires_grad:
                pen.backward()
            opt.step()
            method.after_step(model)
    stream.select(model, t)
    method.after_task(model, stream, t)


@torch.no_grad()
def evaluate(model, stream, upto: int) -> list[float]:
    """Test accuracy on tasks 0..upto (class-IL: over every class seen so far)."""
    was = model.training
    model.eval()
    accs = []
    for j in range(upto + 1):
        stream.select(model, j)
        X, y = stream[j].test
        accs.append(float((model(X).argmax(1) == y).double().mean()))
    model.train(was)
    return accs


def run_method(stream, method_name: str, cfg: TrainConfig, seed: int = 0, strength: float | None = None) -> np.ndarray:
    """Accuracy matrix R (T×T, NaN above the diagonal) of one method on one stream and seed."""
    torch.manual_seed(seed)
    model = stream.make_model(cfg.hidden, seed=seed)
    method = make_method(method_name, strength)
    gen = torch.Generator().manual_seed(seed)
    T = len(stream)
    R = np.full((T, T), np.nan)
    for t in range(T):
        train_task(model, stream, t, method, cfg, gen)
        R[t, : t + 1] = evaluate(model, stream, t)
    return R


def _strength(stream_name, method, strengths):
    """λ / c of a method: user's value for the method or its family, else the stream's default."""
    if method in ("finetune", "joint"):
        return None
    family = "ewc" if method.startswith("ewc") else method
    for table in (strengths or {}, STRENGTHS.get(stream_name, {})):
        for key in (method, family):
            if key in table:
                return table[key]
    return DEFAULT_STRENGTH[family]


def run_stream(stream: str = "permuted", methods=("finetune", "l2", "ewc"), quick: bool = False, seed: int = 0,
               seeds=None, n_tasks: int | None = None, strengths: dict | None = None, epochs: int | None = None,
               progress: bool = False) -> dict:
    """Run ``methods`` on a named stream over ``seeds`` (default: just ``seed``).

    Returns ``{"stream", "scenario", "tasks", "config", "methods": {name: {"R": [T×T per seed],
    "acc"/"bwt"/"forgetting": [per seed], "mean": {...}, "std": {...}, "strength", "seconds"}}}``.
    ``quick`` shortens training (3 epochs per task, 5 tasks for permuted/rotated) for demos and tests.
    """
    torch.set_num_threads(1)
    seeds = [seed] if seeds is None else list(seeds)
    if not seeds:
        raise FisherkitError("seeds is empty: give at least one seed")
    cfg = TrainConfig(**(QUICK if quick else {}))
    if epochs is not None:
        if not isinstance(epochs, int) or epochs < 1:
            raise FisherkitError(f"epochs must be a positive integer; got {epochs!r}")
        cfg.epochs = epochs
    if quick and n_tasks is None and stream in ("permuted", "rotated"):
        n_tasks = 5
    for m in methods:
        make_method(m, _strength(stream, m, strengths))  # fail fast on a bad name
    out = {"stream": stream, "config": asdict(cfg) | {"seeds": seeds, "quick": quick}, "methods": {}}
    bar = _bar(progress, len(methods) * len(seeds))
    for m in methods:
        strength = _strength(stream, m, strengths)
        res = {"R": [], "acc": [], "bwt": [], "forgetting": [], "strength": strength, "seconds": 0.0}
        for s in seeds:
            st = make_stream(stream, n_tasks, seed=s)
            t0 = time.perf_counter()
            R = run_method(st, m, cfg, seed=s, strength=strength)
            res["seconds"] += time.perf_counter() - t0
            summ = metrics.accuracy_matrix_summary(R)
            res["R"].append(R.tolist())
            for k in ("acc", "bwt", "forgetting"):
                res[k].append(summ[k])
            bar(f"{m} seed {s}")
        res["mean"] = {k: float(np.mean(res[k])) for k in ("acc", "bwt", "forgetting")}
        res["std"] = {k: float(np.std(res[k], ddof=1)) if len(seeds) > 1 else 0.0 for k in ("acc", "bwt", "forgetting")}
        out["methods"][m] = res
    out["scenario"], out["tasks"] = st.scenario, [t.name for t in st.tasks]
    bar(None)
    return out


def lambda_sweep(stream: str = "permuted", methods=("ewc",), lams=(1.0, 10.0, 100.0, 1000.0, 10000.0),
                 quick: bool = False, seeds=(0,), n_tasks: int | None = None, epochs: int | None = None,
                 progress: bool = False) -> dict:
    """Average accuracy / forgetting of each method at each strength: {method: {lam: run}}."""
    out = {"stream": stream, "lams": list(lams), "methods": {}}
    for m in methods:
        out["methods"][m] = {}
        for lam in lams:
            r = run_stream(stream, [m], quick=quick, seeds=seeds, n_tasks=n_tasks, strengths={m: lam},
                           epochs=epochs, progress=progress)
            out["methods"][m][lam] = r["methods"][m]
    return out


FISHER_KINDS = ("ewc", "ewc-mc", "ewc-empirical", "ewc-sqbatch")
FISHER_LAMS = (1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0)


def fisher_comparison(stream: str = "permuted", lams=FISHER_LAMS, **kw) -> dict:
    """EWC with the exact, MC (1 sample), empirical and squared-batch-mean Fisher, swept over λ."""
    return lambda_sweep(stream, FISHER_KINDS, lams, **kw)


def merge_results(*results: dict) -> dict:
    """Combine ``run_stream`` results of the same stream and seeds (e.g. methods run in parallel)."""
    if not results:
        raise FisherkitError("merge_results needs at least one result")
    out = dict(results[0], methods=dict(results[0]["methods"]))
    for r in results[1:]:
        if r["stream"] != out["stream"] or r["config"] != out["config"] or r.get("tasks") != out.get("tasks"):
            raise FisherkitError("can only merge runs of the same stream, tasks, seeds and training settings")
        out["methods"].update(r["methods"])
    return out


def format_table(results: dict) -> str:
    """Plain-text table: method, strength, ACC, BWT, forgetting (percent, mean ± std over seeds)."""
    n = len(results["config"]["seeds"])
    lines = [f"{results['stream']} ({results.get('scenario', '')}-incremental, {len(results.get('tasks', []))} tasks, "
             f"{n} seed{'s' if n > 1 else ''}, mean ± std, %)",
             f"{'method':<14}{'λ/c':>9}{'ACC':>16}{'BWT':>16}{'forgetting':>16}"]
    for m, r in results["methods"].items():
        cells = [f"{100 * r['mean'][k]:7.2f} ± {100 * r['std'][k]:5.2f}" for k in ("acc", "bwt", "forgetting")]
        lam = "-" if r["strength"] is None else f"{r['strength']:g}"
        lines.append(f"{m:<14}{lam:>9}" + "".join(f"{c:>16}" for c in cells))
    return "\n".join(lines)


def format_sweep(sweep: dict) -> str:
    """Plain-text table of a λ sweep: ACC and forgetting (%, mean ± std) per method and λ."""
    lams = sweep["lams"]
    lines = [f"{sweep['stream']}: λ sweep, average accuracy / forgetting (%, mean ± std over seeds)",
             f"{'method':<14}" + "".join(f"{'λ=' + format(l, 'g'):>24}" for l in lams)]
    for m, runs in sweep["methods"].items():
        cells = [f"{100 * runs[l]['mean']['acc']:.1f}±{100 * runs[l]['std']['acc']:.1f} / "
                 f"{100 * runs[l]['mean']['forgetting']:.1f}±{100 * runs[l]['std']['forgetting']:.1f}" for l in lams]
        lines.append(f"{m:<14}" + "".join(f"{c:>24}" for c in cells))
    return "\n".join(lines)


def _bar(enabled, total):
    if not enabled:
        return lambda msg: None
    from rich.progress import Progress

    prog = Progress(transient=True)
    prog.start()
    task = prog.add_task("continual", total=total)

    def step(msg):
        if msg is None:
            prog.stop()
        else:
            prog.update(task, advance=1, description=msg)

    return step
