"""Ready-made comparisons of query strategies on bundled data or a CSV (used by the CLI and the report).

``run_comparison`` trains a small MLP (64-unit or 32-unit hidden layers, full-batch Adam, fresh
initialisation every round) inside ``active.run`` and returns the learning curves plus a summary:
labels needed to reach the target accuracy and area under the learning curve, mean ± std over seeds.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from ..errors import FisherkitError
from ..active.loop import run, summarize
from .active_plots import plot_learning_curves  # noqa: F401  (re-exported for the demo report)

# per data set: hidden width, initial labels, batch size, rounds, target accuracy, epochs per round
CONFIGS = {
    "digits": dict(hidden=64, n_initial=20, batch_size=20, rounds=14, target=0.90, epochs=100),
    "breast_cancer": dict(hidden=32, n_initial=6, batch_size=6, rounds=10, target=0.95, epochs=100),
    "wine": dict(hidden=32, n_initial=6, batch_size=3, rounds=10, target=0.95, epochs=100),
    "csv": dict(hidden=32, n_initial=10, batch_size=10, rounds=10, target=0.90, epochs=100),
}
QUICK = dict(rounds=6, epochs=60)
DEFAULT_STRATEGIES = ["random", "entropy", "margin", "bald", "egl", "egl_cluster", "badge", "bait"]
QUICK_STRATEGIES = ["random", "entropy", "egl", "egl_cluster", "badge"]


def mlp(n_in: int, hidden: int, n_out: int) -> nn.Module:
    """The experiment model: two ReLU hidden layers of width ``hidden``, linear head."""
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, n_out))


def _label_key(text: str):
    """A class label as a person means it: "0", "0.0" and " 0 " are one class (numbers compare as
    numbers; integral ones print as integers), other text is kept as written."""
    t = text.strip()
    try:
        v = float(t)
    except ValueError:
        return t
    return int(v) if v.is_integer() else v


def _read_csv(path: str, label: str | None):
    """Features and labels of a CSV with a header: comma-, semicolon- or tab-separated (sniffed from
    the header), UTF-8 text; labels "0" and "0.0" are one class."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            text = fh.read()
    except UnicodeDecodeError:
        raise FisherkitError(f"{path!r} is not a text CSV (not UTF-8: a binary or spreadsheet file?); "
                             "export it as CSV (UTF-8) first") from None
    except OSError as e:
        raise FisherkitError(f"cannot read CSV {path!r}: {e.strerror}") from None
    if "\x00" in text:
        raise FisherkitError(f"{path!r} is not a text CSV (it contains NUL bytes: a binary file?)")
    first = text.splitlines()[0] if text.strip() else ""
    counts = {d: first.count(d) for d in (",", ";", "\t")}
    delim = max(counts, key=counts.get) if max(counts.values()) > 0 else ","
    rows = list(csv.reader(text.splitlines(), delimiter=delim))
    if len(rows) < 3:
        raise FisherkitError(f"CSV {path!r} needs a header and at least two data rows")
    header, body = [h.strip() for h in rows[0]], [r for r in rows[1:] if r]
    if len(header) < 2:
        raise FisherkitError(f"CSV {path!r} has one column ({header[0]!r}); it needs feature columns and a label "
                             "column separated by commas, semicolons or tabs")
    col = len(header) - 1 if label is None else (header.index(label) if label in header else None)
    if col is None:
        raise FisherkitError(f"CSV {path!r} has no column {label!r}; columns are {header}")
    ys, xs = [], []
    for i, r in enumerate(body, start=2):
        if len(r) != len(header):
            raise FisherkitError(f"CSV {path!r} line {i} has {len(r)} fields, the header has {len(header)}")
        ys.append(_label_key(r[col]))
        try:
            xs.append([float(v) if v.strip() != "" else float("nan") for j, v in enumerate(r) if j != col])
        except ValueError:
            bad = next(v for j, v in enumerate(r) if j != col and v.strip() != "" and not _is_number(v))
            hint = (" (a decimal comma? write 1.5, not 1,5)" if delim == ";" and _is_number(bad.replace(",", ".", 1))
                    else "")
            raise FisherkitError(f"CSV {path!r} line {i}: feature value {bad!r} is not a number{hint}") from None
    X = np.asarray(xs, dtype=np.float64)
    if not np.isfinite(X).all():
        bad = int(np.nonzero(~np.isfinite(X).all(1))[0][0]) + 2
        raise FisherkitError(f"CSV {path!r} has missing or NaN features (first at line {bad}); impute or drop them")
    classes = sorted(set(ys), key=lambda v: (isinstance(v, str), v if not isinstance(v, str) else 0, str(v)))
    if len(classes) < 2:
        raise FisherkitError(f"CSV {path!r}: the label column needs at least 2 classes; found {classes}")
    index = {v: k for k, v in enumerate(classes)}
    y = np.asarray([index[v] for v in ys], dtype=np.int64)
    return X, y, len(classes)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def prepare(dataset: str = "digits", csv: str | None = None, label: str | None = None, seed: int = 0):
    """(X_train, y_train, X_test, y_test, n_classes) as float32/long tensors, standardised."""
    if csv is not None:
        from sklearn.model_selection import train_test_split

        X, y, c = _read_csv(csv, label)
        counts = np.bincount(y)
        strat = y if counts.min() >= 2 else None
        Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=seed, stratify=strat)
        mu, sd = Xtr.mean(0), Xtr.std(0)
        sd[sd == 0] = 1
        t = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
        return t((Xtr - mu) / sd), torch.as_tensor(ytr), t((Xte - mu) / sd), torch.as_tensor(yte), c
    from .. import datasets

    d = datasets.load(dataset, seed=seed)
    return d.X_train, d.y_train, d.X_test, d.y_test, d.n_classes


def run_comparison(dataset: str = "digits", strategies=None, quick: bool = False, seed: int = 0, seeds=None,
                   progress: bool = False, csv: str | None = None, label: str | None = None, **overrides) -> dict:
    """Learning curves of several strategies on one data set, with a summary table.

    ``quick``: one seed, 6 rounds, 60 epochs (< 1 minute); otherwise ``seeds`` (default 5 seeds
    starting at ``seed``). ``overrides`` replace entries of the data set's config (``n_initial``,
    ``batch_size``, ``rounds``, ``target``, ``epochs``, ``hidden``). Returns the ``active.run``
    result plus ``"summary"`` (from ``active.summarize``), ``"dataset"``, ``"target"``, ``"seconds"``.
    """
    name = "csv" if csv is not None else dataset
    if name not in CONFIGS:
        raise FisherkitError(f"unknown data set {dataset!r}; bundled ones are {sorted(k for k in CONFIGS if k != 'csv')}")
    cfg = dict(CONFIGS[name])
    if quick:
        cfg.update(QUICK)
    unknown = set(overrides) - set(cfg)
    if unknown:
        raise FisherkitError(f"unknown setting(s) {sorted(unknown)}; use {sorted(cfg)}")
    cfg.update(overrides)
    if strategies is None:
        strategies = QUICK_STRATEGIES if quick else DEFAULT_STRATEGIES
    if seeds is None:
        seeds = [seed] if quick else list(range(seed, seed + 5))
    Xtr, ytr, Xte, yte, c = prepare(dataset, csv, label, seed=0)
    budget = cfg["n_initial"] + cfg["rounds"] * cfg["batch_size"]
    if budget > Xtr.shape[0]:
        rounds = (Xtr.shape[0] - cfg["n_initial"]) // cfg["batch_size"]
        if rounds < 1:
            raise FisherkitError(f"the data set has only {Xtr.shape[0]} training points: too few for "
                                 f"{cfg['n_initial']} initial labels and batches of {cfg['batch_size']}")
        cfg["rounds"] = rounds
    d_in, hidden = Xtr.shape[1], cfg["hidden"]
    t0 = time.perf_counter()
    res = run(lambda: mlp(d_in, hidden, c), Xtr, ytr, Xte, yte, strategies=strategies, n_initial=cfg["n_initial"],
              batch_size=cfg["batch_size"], rounds=cfg["rounds"], seeds=seeds, epochs=cfg["epochs"], progress=progress)
    res["seconds"] = time.perf_counter() - t0
    res["dataset"] = csv if csv is not None else dataset
    res["target"] = cfg["target"]
    res["config"].update(hidden=hidden, n_classes=c, model=f"MLP {d_in}-{hidden}-{hidden}-{c}")
    res["summary"] = summarize(res, cfg["target"])
    return res


def format_table(results: dict) -> str:
    """Plain-text table: labels to target and AULC (mean ± std over seeds) per strategy."""
    target, summ = results["target"], results["summary"]
    rnd = summ.get("random", {}).get("labels_to_target_mean_curve", float("nan"))
    lines = [f"{'strategy':<18}{'labels to ' + format(target, '.0%'):>16}{'vs random':>11}{'reached':>9}"
             f"{'AULC':>17}{'final acc':>11}{'select s':>10}"]
    n_seeds = len(results["config"]["seeds"])
    for name, s in summ.items():
        ltt = s["labels_to_target_mean_curve"]
        rel = "" if not (np.isfinite(ltt) and np.isfinite(rnd)) or name == "random" else f"{(1 - ltt / rnd):+.0%}"
        ltt_s = "never" if not np.isfinite(ltt) else f"{ltt:.0f}"
        if np.isfinite(ltt) and np.isfinite(s["ltt_std"]) and n_seeds > 1:
            ltt_s += f" ±{s['ltt_std']:.0f}"
        lines.append(f"{name:<18}{ltt_s:>16}{rel:>11}{s['reached']:>6}/{n_seeds:<2}"
                     f"{s['aulc_mean']:>10.3f} ±{s['aulc_std']:.3f}{s['final_acc_mean']:>11.3f}"
                     f"{s['select_seconds_mean']:>10.1f}")
    return "\n".join(lines)


def selection_diagnostics(dataset: str = "digits", n_labels: int = 100, k: int = 20, seeds=(0, 1, 2, 3, 4),
                          strategies=("random", "entropy", "egl", "egl_cluster", "badge", "bait")) -> dict:
    """What each strategy's batch looks like, from a model trained on ``n_labels`` random labels.

    Per strategy, mean over seeds of: ``cos`` (mean pairwise cosine similarity of the batch's
    last-layer inputs h: redundancy), ``classes`` (distinct predicted classes in the batch),
    ``norm_ratio`` (mean ‖h‖² of the batch / mean over the pool: EGL's last-layer factor (‖h‖² + 1)
    favours large-norm points). Also the rank correlations of the EGL score with the Gini
    uncertainty 1 − ‖p‖² and with ‖h‖² over the pool.
    """
    from scipy.stats import spearmanr

    from ..active.loop import make_strategy, train_classifier
    from ..active.scores import egl_scores, last_layer_features

    cfg = CONFIGS[dataset]
    Xtr, ytr, _, _, c = prepare(dataset)
    out = {s: {"cos": [], "classes": [], "norm_ratio": []} for s in strategies}
    corr = {"gini": [], "h_norm": []}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        lab = rng.choice(Xtr.shape[0], n_labels, replace=False)
        pool = np.setdiff1d(np.arange(Xtr.shape[0]), lab)
        torch.manual_seed(seed)
        model = mlp(Xtr.shape[1], cfg["hidden"], c)
        train_classifier(model, Xtr[lab], ytr[lab], cfg["epochs"])
        Xp = Xtr[pool]
        h, f, _ = last_layer_features(model, Xp)
        p = torch.softmax(f.double(), -1)
        hn = h.double().pow(2).sum(1)
        e = egl_scores(model, Xp)
        corr["gini"].append(float(spearmanr(e, 1 - p.pow(2).sum(1)).statistic))
        corr["h_norm"].append(float(spearmanr(e, hn).statistic))
        for s in strategies:
            idx = make_strategy(s, seed).select(model, Xp, k, X_labeled=Xtr[lab])
            z = torch.nn.functional.normalize(h[idx].double(), dim=1)
            cs = z @ z.T
            out[s]["cos"].append(float((cs.sum() - k) / (k * (k - 1))))
            out[s]["classes"].append(int(len(set(p[idx].argmax(1).tolist()))))
            out[s]["norm_ratio"].append(float(hn[idx].mean() / hn.mean()))
    res = {s: {m: float(np.mean(v)) for m, v in d.items()} | {f"{m}_std": float(np.std(v)) for m, v in d.items()}
           for s, d in out.items()}
    return {"batches": res, "spearman_egl_vs_gini": float(np.mean(corr["gini"])),
            "spearman_egl_vs_h_norm": float(np.mean(corr["h_norm"])), "n_labels": n_labels, "k": k,
            "seeds": list(seeds)}
