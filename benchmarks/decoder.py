"""M5: GPT-2-style causal decoders on the offline character text — times, curvlinops, peak memory.

Called by ``bench_fisher.py --models M5,M5hf``. Both models: 4 layers, d = 256, 8 heads, context 128,
batch 8 sequences, vocabulary V = the 97 characters of ``ngd_tasks``' text (the standard library's own
source), labels = the next character at every position (already aligned: no ``shift_labels``).

* ``M5``   — the decoder in plain PyTorch (``common.Decoder``): ``nn.Linear`` q/k/v/out, MLP and an untied
             LM head, ``nn.Embedding`` tokens and positions, ``nn.LayerNorm`` — every layer has a fast path;
             curvlinops' KFAC supports it (``nn.Linear`` only), so it is the model of the peer comparison.
* ``M5hf`` — HuggingFace ``GPT2LMHeadModel`` of the same size (``Conv1D`` projections, LM head tied to the
             token embedding), what the issue's users run.

**Exact kinds on a vocabulary.** The Fisher of a sequence is Σ_t E_{y_t}[g_t g_tᵀ]: every position t and
class c needs its own backward direction (positions cannot share one: the cross terms between them are
not zero for a given direction). So ``kind="exact"`` costs C_eff = T·V = 128 · 97 = 12,416 directions per
sequence, each a backward over the sequence: ∝ T²·V against an epoch's T. The exact row is measured on one
sequence of 16 tokens (C_eff = 1,552) against an epoch over that same sequence.
The affordable alternatives: ``kind="mc"`` with ``mc_samples=k`` (k directions per sequence, an unbiased
estimate: labels sampled at every position at once, whose cross terms vanish in expectation) and
``kind="empirical"`` (one direction, biased). A top-k / "exact over the k most likely classes" kind is
not offered: it drops the tail mass of p(y|x) and is biased by an amount that depends on the model.
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from common import M5_BATCH, M5_CONTEXT, batches, build, logits_of, median_time, paired_time, plain_epoch, rss_bytes

import fisherkit as fk

HERE = Path(__file__).resolve().parent
# targets of issue 14 on ratio to a plain epoch
TARGETS = {"diag_mc": 1.5, "diag_emp": 1.5, "kfac_mc": 2.0, "kfac_mc_reduce": 2.0}
MEMORY_TARGET = 2.5  # × one training step
CURVLINOPS_TOL = 1e-4  # float32 factors, relative (Frobenius) per layer
EXACT_TOKENS = 16  # the exact row's sequence length: its cost grows as T²·V (T = 128 would cost ~64× more)


def _out(name):
    return "logits" if name == "M5hf" else None


def linear_params(model) -> list[str]:
    return [f"{n}.{k}" for n, m in model.named_modules() if isinstance(m, nn.Linear) for k in ("weight", "bias")
            if getattr(m, k) is not None]


def fisher_fn(name, model, X, y, kind, structure, approx="expand", params=None, mc_samples=1, seed=0):
    def run():
        F = fk.fisher(model, (X, y), kind=kind, structure=structure, batch_size=M5_BATCH, output=_out(name),
                      kfac_approx=approx, params=params, mc_samples=mc_samples,
                      generator=torch.Generator().manual_seed(seed))
        return F.factors() if structure == "kfac" else F.diag()
    return run


def methods(name, model, X, y):
    """(key, label, callable) of the fisherkit rows timed against the epoch over all of X."""
    return [
        ("diag_mc", "diag mc", fisher_fn(name, model, X, y, "mc", "diag")),
        ("diag_emp", "diag empirical", fisher_fn(name, model, X, y, "empirical", "diag")),
        ("diag_mc8", "diag mc, mc_samples=8", fisher_fn(name, model, X, y, "mc", "diag", mc_samples=8)),
        ("kfac_mc", "kfac mc expand", fisher_fn(name, model, X, y, "mc", "kfac")),
        ("kfac_mc_reduce", "kfac mc reduce", fisher_fn(name, model, X, y, "mc", "kfac", "reduce")),
    ]


# ---------------------------------------------------------------- curvlinops (M5 only)
class _ClassesSecond(nn.Module):
    """curvlinops' CrossEntropyLoss convention: logits [B, V, T] (the classes in dimension 1)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).transpose(1, 2)


def curvlinops_fn(model, X, y, fisher_type, approx, seed=2147483647):
    """curvlinops' KFAC of the Linear layers, in fisherkit's convention (name → (A, G), G divided by N).

    curvlinops with ``CrossEntropyLoss(reduction="sum")``: A = Σₙ (1/T) Σ_t ã ãᵀ / N (expand) or Σₙ ā āᵀ / N
    (reduce), G = Σₙ Σ_t g gᵀ (expand) or Σₙ ĝ ĝᵀ (reduce) — a sum, so G / N is fisherkit's per-sequence
    mean. (``reduction="mean"`` divides G by N·T instead: fisherkit's ``per_token`` scale.)
    """
    from curvlinops import KFACLinearOperator

    n, T = X.shape
    data = batches(X, y, M5_BATCH)

    def run():
        wrapped = _ClassesSecond(model)
        mods = dict(model.named_modules())
        names = linear_params(model)
        params = [getattr(mods[p.rsplit(".", 1)[0]], p.rsplit(".", 1)[1]) for p in names]
        op = KFACLinearOperator(wrapped, nn.CrossEntropyLoss(reduction="sum"), params, data, fisher_type=fisher_type,
                                kfac_approx=approx, separate_weight_and_bias=False, check_deterministic=False,
                                num_data=n, num_per_example_loss_terms=T, seed=seed)
        op.compute_kronecker_factors()
        return {k.removeprefix("model.") + ".weight": (op._input_covariances[k], op._gradient_covariances[k] / n)
                for k in op._mapping}
    return run


def _rel(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def factor_errors(peer: dict, ours: dict, ref_G: dict | None = None) -> dict:
    """Largest per-layer relative error of A and of G. A layer whose G is below 1e-5 of ``ref_G``'s (KFAC-reduce
    on attention keys: Σ_t ∂L/∂k_t = 0 because softmax ignores a shift of a query's scores) is zero up to
    rounding in both libraries and is counted apart."""
    ea, eg, zero = 0.0, 0.0, []
    for w, (A, G) in ours.items():
        Ap, Gp = peer[w]
        ea = max(ea, _rel(Ap, A))
        if ref_G is not None and G.norm() < 1e-5 * ref_G[w].norm():
            zero.append((w, float(G.norm() / ref_G[w].norm()), float(Gp.norm() / ref_G[w].norm())))
            continue
        eg = max(eg, _rel(Gp, G))
    return dict(err_A=ea, err_G=eg, zero_G=zero)


def scale_free_err(peer: dict, ours: dict, skip=()) -> float:
    """Largest per-layer error of the normalised factors A/tr A and G·tr A (Monte-Carlo comparisons); ``skip``:
    layers whose G is zero up to rounding (KFAC-reduce's attention keys), where a relative error is noise."""
    worst = 0.0
    for w, (A, G) in ours.items():
        if w in skip:
            continue
        Ap, Gp = peer[w]
        ta, tp = A.double().trace(), Ap.double().trace()
        worst = max(worst, _rel(Ap / tp, A / ta), _rel(Gp * tp, G * ta))
    return worst


def curvlinops_check(model, X, y, log) -> list[dict]:
    """Deterministic KFAC (empirical Fisher) factors: fisherkit vs curvlinops, expand and reduce."""
    out = []
    lp = linear_params(model)
    ref = None
    for approx in ("expand", "reduce"):
        ours = fisher_fn("M5", model, X, y, "empirical", "kfac", approx, params=lp)()
        peer = curvlinops_fn(model, X, y, "empirical", approx)()
        if approx == "expand":
            ref = {w: G for w, (A, G) in ours.items()}
        e = factor_errors(peer, ours, None if approx == "expand" else ref)
        e.update(approx=approx, layers=len(ours), tol=CURVLINOPS_TOL,
                 ok=e["err_A"] < CURVLINOPS_TOL and e["err_G"] < CURVLINOPS_TOL)
        out.append(e)
        log(f"  curvlinops check, empirical KFAC-{approx}: {len(ours)} Linear layers, max rel. err A {e['err_A']:.1e}, "
            f"G {e['err_G']:.1e} (tol {CURVLINOPS_TOL:g}: {'ok' if e['ok'] else 'MISSED'})"
            + (f"; {len(e['zero_G'])} layers with G = 0 up to rounding in both (attention keys)" if e["zero_G"] else ""))
    return out


# ---------------------------------------------------------------- timing
def time_decoder(name, args, log):
    torch.manual_seed(0)
    load_start = os.getloadavg()[0]
    n = args.samples or (32 if args.quick else 64)
    model, X, y = build(name, n)
    vocab = logits_of(model(X[:1])).shape[-1]
    data = batches(X, y, M5_BATCH)
    reps = args.repeats
    epoch = lambda: plain_epoch(model, data)  # noqa: E731
    t_epoch, _ = median_time(epoch, reps)
    P = sum(p.numel() for p in model.parameters())
    log(f"\n{name}: {P:,} parameters, {n} sequences of {M5_CONTEXT} tokens (batch {M5_BATCH}), vocabulary {vocab}; "
        f"plain epoch {t_epoch * 1e3:.1f} ms")
    rows, results = [], {}

    def add(key, label, t, ratio, target, **extra):
        row = dict(model=name, library="fisherkit", method=label, key=key, seconds=t, ratio_epoch=ratio,
                   target_epoch=target, met_epoch=None if target is None else ratio <= target, **extra)
        rows.append(row)
        log(f"  fisherkit {label:<44} {t * 1e3:9.1f} ms  {ratio:7.2f}× epoch"
            + ("" if target is None else f"  (target ≤ {target:g}: {'ok' if row['met_epoch'] else 'MISSED'})"))
        return row

    for key, label, fn in methods(name, model, X, y):
        if key in args.skip:
            continue
        t, ratio, res = paired_time(fn, epoch, reps, slow=60.0)
        results[key] = res
        add(key, label, t, ratio, TARGETS.get(key))

    if "diag_exact" not in args.skip:
        # exact: C_eff = T·V directions per sequence, each a backward over the sequence (cost ∝ T²·V against an
        # epoch's T): one sequence of EXACT_TOKENS tokens, against an epoch over that same sequence
        x1, y1 = X[:1, :EXACT_TOKENS], y[:1, :EXACT_TOKENS]
        c_eff = EXACT_TOKENS * vocab
        t1, _ = median_time(lambda: plain_epoch(model, [(x1, y1)]), 5)
        t0 = time.perf_counter()
        fk.fisher(model, (x1, y1), kind="exact", structure="diag", output=_out(name))
        t = time.perf_counter() - t0
        t1b, _ = median_time(lambda: plain_epoch(model, [(x1, y1)]), 5)
        te = statistics.median([t1, t1b])
        add("diag_exact", f"diag exact (1 sequence of {EXACT_TOKENS} tokens; C_eff = T·V = {c_eff:,})", t, t / te,
            0.6 * c_eff, c_eff=c_eff, ratio_over_c_eff=t / te / c_eff, epoch_1seq_seconds=te)

    report = dict(model=name, params=P, samples=n, tokens=n * M5_CONTEXT, vocab=vocab, epoch_seconds=t_epoch,
                  rows=rows, load_start=load_start)
    if name == "M5" and not args.no_peers:
        try:
            import curvlinops  # noqa: F401, PLC0415
        except ImportError:
            log("  curvlinops not installed: peer rows skipped")
            report["load_end"] = os.getloadavg()[0]
            return report
        report["curvlinops_check"] = check = curvlinops_check(model, X, y, log)
        zero = {z[0] for c in check if c["approx"] == "reduce" for z in c["zero_G"]}
        lp = linear_params(model)
        for approx in ("expand", "reduce"):
            fk_fn = fisher_fn(name, model, X, y, "mc", "kfac", approx, params=lp)
            t, ratio, ours = paired_time(fk_fn, epoch, reps, slow=60.0)
            add(f"kfac_mc_{approx}_linear", f"kfac mc {approx}, Linear layers only", t, ratio, None)
            t_p, ratio_p, peer = paired_time(curvlinops_fn(model, X, y, "mc", approx), epoch, reps, slow=60.0)
            other = fisher_fn(name, model, X, y, "mc", "kfac", approx, params=lp, seed=1)()
            skip = zero if approx == "reduce" else set()
            e_peer, e_ours = scale_free_err(peer, ours, skip), scale_free_err(other, ours, skip)
            ok = e_peer <= 2 * e_ours + 0.05
            row = dict(model=name, library="curvlin", method=f"KFACLinearOperator mc {approx}", key=f"kfac_mc_{approx}_linear",
                       seconds=t_p, ratio_epoch=ratio_p, fisherkit_over_peer=ratio / ratio_p,
                       agreement=dict(ok=ok, note=f"MC: peer {e_peer:.2f} from ours vs ours(other seed) {e_ours:.2f}"
                                      + (f", {len(skip)} zero-G key layers left out" if skip else "")))
            rows.append(row)
            log(f"  curvlin   {row['method']:<44} {t_p * 1e3:9.1f} ms  {ratio_p:7.2f}× epoch  agrees: {ok} "
                f"({row['agreement']['note']})  fisherkit/peer = {row['fisherkit_over_peer']:.2f} (target ≤ 1)")
    report["load_end"] = os.getloadavg()[0]
    return report


# ---------------------------------------------------------------- memory (fresh process per method)
PROBES = {"diag_mc": ("mc", "diag", "expand"), "diag_emp": ("empirical", "diag", "expand"),
          "kfac_mc": ("mc", "kfac", "expand"), "kfac_mc_reduce": ("mc", "kfac", "reduce")}


def _train_step(model, X, y):
    """One hand-written SGD step on one batch (torch.optim's first step imports torch._dynamo)."""
    f = logits_of(model(X[:M5_BATCH]))
    nn.functional.cross_entropy(f.reshape(-1, f.shape[-1]), y[:M5_BATCH].reshape(-1)).backward()
    with torch.no_grad():
        for p in model.parameters():
            p.sub_(p.grad, alpha=1e-3)
            p.grad = None


def probe(spec: str, quick: bool) -> dict:
    """``bench_fisher.py --probe M5:METHOD``: the peak RSS of one method above the level before it."""
    from memory import _peak, _reset_peak

    name, method = spec.split(":")
    model, X, y = build(name, 32 if quick else 64)
    # warm-up: the autograd engine, BLAS and allocator pools, on a copy, so no one-off cost lands on the method
    warm = copy.deepcopy(model)
    _train_step(warm, X, y)
    fk.fisher(warm, (X[:2], y[:2]), kind="mc", structure="kfac", output=_out(name))
    del warm
    if method == "plain_step":
        run = lambda: _train_step(model, X, y)  # noqa: E731
    else:
        kind, structure, approx = PROBES[method]
        run = lambda: fk.fisher(model, (X, y), kind=kind, structure=structure, batch_size=M5_BATCH,  # noqa: E731
                                output=_out(name), kfac_approx=approx, generator=torch.Generator().manual_seed(0))
    before = rss_bytes()
    exact = _reset_peak()
    t0 = time.perf_counter()
    res = run()
    del res
    return dict(spec=spec, peak_above_start=_peak() - before, rss_before=before, seconds=time.perf_counter() - t0,
                exact_peak=exact)


def memory_section(name: str, quick: bool, log) -> dict:
    log(f"\nPeak memory on {name} (fresh process per method), MiB above the process before the call:")
    res = {}
    for method in ["plain_step", *PROBES]:
        cmd = [sys.executable, str(HERE / "bench_fisher.py"), "--probe", f"{name}:{method}"] + (["--quick"] if quick else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        res[method] = json.loads(out.stdout.strip().splitlines()[-1])
    base = res["plain_step"]["peak_above_start"]
    for method, r in res.items():
        r["ratio_plain_step"] = r["peak_above_start"] / base
        r["target"] = None if method == "plain_step" else MEMORY_TARGET
        r["met"] = None if r["target"] is None else r["ratio_plain_step"] <= MEMORY_TARGET
        log(f"  {method:<15} {r['peak_above_start'] / 2**20:8.1f} MiB  {r['ratio_plain_step']:5.2f}× a training step"
            + ("" if r["target"] is None else f"  (target ≤ {MEMORY_TARGET}: {'ok' if r['met'] else 'MISSED'})"))
    return res


# ---------------------------------------------------------------- Markdown
def section_markdown(report: dict) -> str:
    from report import markdown

    lines = [markdown({k: v for k, v in report.items() if k not in ("memory", "streaming")})]
    lines[0] = lines[0].replace(f"batch {report['batch']}", f"batch {report['batch']} (M5: 8 sequences of 128 tokens)")
    if "merged" in report:
        mg = report["merged"]
        lines[0] = lines[0].replace("\n", f" Rows of other runs come from `{mg['file']}` ({mg['date']}; "
                                    f"{', '.join(f'{k} {v}' for k, v in mg['versions'].items())}).\n", 1)
    loads = [f"{m['model']} {m['load_start']:.1f} → {m['load_end']:.1f}" for m in report["models"] if "load_end" in m]
    if loads:
        lines.append("Load average (1 min) at the start → end of each decoder's timings (2 cores): "
                     + ", ".join(loads) + ".\n")
    for mod in report["models"]:
        if "curvlinops_check" in mod:
            lines += [f"**curvlinops check on {mod['model']}** — the same deterministic quantity (empirical-Fisher KFAC "
                      "of every `nn.Linear`, fisherkit's per-sequence mean; curvlinops `reduction=\"sum\"`, G / N), "
                      "largest relative error over the layers:", "",
                      "| KFAC | layers | A | G | tolerance | agrees |", "|---|---:|---:|---:|---:|---|"]
            for c in mod["curvlinops_check"]:
                zero = f"; G = 0 up to rounding in both for {len(c['zero_G'])} key projections" if c["zero_G"] else ""
                lines.append(f"| {c['approx']} | {c['layers']} | {c['err_A']:.1e} | {c['err_G']:.1e} | {c['tol']:g} | "
                             f"{'yes' if c['ok'] else '**no**'}{zero} |")
            lines.append("")
    for name, mem in report.get("memory_decoders", {}).items():
        lines += [f"**Peak memory on {name}** (fresh process per method, peak RSS above the level before the call; "
                  "the Fisher over all the sequences, the training step on one batch of 8):", "",
                  "| method | MiB | × training step | target |", "|---|---:|---:|---|"]
        for k, r in mem.items():
            tgt = "" if r["target"] is None else f"≤ {r['target']:g} {'ok' if r['met'] else '**missed**'}"
            lines.append(f"| {k} | {r['peak_above_start'] / 2**20:.1f} | {r['ratio_plain_step']:.2f} | {tgt} |")
        lines.append("")
    return "\n".join(lines)


def write_section(report: dict, path: Path, section: str) -> None:
    import re

    start, end = f"<!-- {section}:start -->", f"<!-- {section}:end -->"
    block = f"{start}\n{section_markdown(report)}\n{end}"
    text = path.read_text() if path.exists() else ""
    if start in text and end in text:
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text + ("\n" if text else "") + block + "\n"
    path.write_text(text)


def render(files: list[str], path: Path, section: str) -> None:
    """One Markdown block from several results files (runs made in different venvs or processes): their models,
    decoder memory and curvlinops checks side by side; the first file's header."""
    reports = [json.loads(Path(f).read_text()) for f in files]
    report = dict(reports[0], models=[m for r in reports for m in r["models"]])
    report["memory_decoders"] = {k: v for r in reports for k, v in r.get("memory_decoders", {}).items()}
    report.pop("merged", None)
    if len(reports) > 1:
        report["merged"] = dict(file=", ".join(files[1:]), date=" / ".join(r["machine"]["date"] for r in reports[1:]),
                                versions=reports[1]["machine"]["versions"])
    write_section(report, path, section)


if __name__ == "__main__":  # python benchmarks/decoder.py A.json,B.json SECTION FILE.md
    sys.path.insert(0, str(HERE))
    render(sys.argv[1].split(","), Path(sys.argv[3]), sys.argv[2])
