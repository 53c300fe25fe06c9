"""Markdown tables of a benchmark report (for docs/performance.md, between the bench markers)."""

from __future__ import annotations

import re
from pathlib import Path

START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def _fmt(x, spec=".2f"):
    return "—" if x is None else format(x, spec)


def markdown(report: dict) -> str:
    m = report["machine"]
    vers = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    lines = [f"Run {m['date']} on {m['cpu']} ({m['cores']} cores, shared), {m['threads']} thread, float32, "
             f"batch {report['batch']}, median of {report['repeats']} after one warm-up"
             f"{' — quick mode (reduced data)' if report['quick'] else ''}. Versions: {vers}.", ""]
    for mod in report["models"]:
        lines += [f"**{mod['model']}** — {mod['params']:,} parameters, {mod['samples']:,} samples, plain epoch "
                  f"{mod['epoch_seconds'] * 1e3:.0f} ms", "",
                  "| library | method | ms | × epoch | target × epoch | fisherkit / peer | agrees |",
                  "|---|---|---:|---:|---|---:|---|"]
        for r in mod["rows"]:
            if r["key"].startswith("func_"):
                continue
            tgt = r.get("target_epoch")
            tgt_s = "" if tgt is None else f"≤ {tgt:g} {'ok' if r['met_epoch'] else '**missed**'}"
            agree = r.get("agreement")
            agree_s = "" if agree is None else f"{'yes' if agree['ok'] else '**no**'} ({agree['note']})"
            lines.append(f"| {r['library']} | {r['method']} | {r['seconds'] * 1e3:.1f} | {r['ratio_epoch']:.2f} | "
                         f"{tgt_s} | {_fmt(r.get('fisherkit_over_peer'))} | {agree_s} |")
        func = [r for r in mod["rows"] if r["key"].startswith("func_")]
        if func:
            lines += ["", "torch.func path vs hooks on the Linear layers (diag; target ≤ 2×):", "",
                      "| kind | hooks ms | func ms | func / hooks | rel. diff |", "|---|---:|---:|---:|---:|"]
            for r in func:
                lines.append(f"| {r['key'][5:]} | {r['hooks_seconds'] * 1e3:.1f} | {r['seconds'] * 1e3:.1f} | "
                             f"{r['func_over_hooks']:.2f} {'ok' if r['met'] else '**missed**'} | {r['rel_diff']:.1e} |")
        lines.append("")
    if "memory" in report:
        when = f", re-measured {report['memory_date']}" if "memory_date" in report else ""
        lines += [f"**Peak memory on M2** (fresh process per method, peak RSS above the level before the call{when}):", "",
                  "| method | MiB | × plain training step | target |", "|---|---:|---:|---|"]
        for k, r in report["memory"].items():
            tgt = "" if r["target"] is None else f"≤ 2 {'ok' if r['met'] else '**missed**'}"
            lines.append(f"| {k} | {r['peak_above_start'] / 2**20:.1f} | {r['ratio_plain_step']:.2f} | {tgt} |")
        lines.append("")
    if "streaming" in report:
        lines += ["**Streaming**, 10M-parameter MLP (784-3000-2500-10), kind=mc, data generated batch by batch:", "",
                  "| structure | samples | s | RSS first tenth (MiB) | RSS last tenth (MiB) | growth (MiB) |",
                  "|---|---:|---:|---:|---:|---:|"]
        for k, r in report["streaming"].items():
            lines.append(f"| {k} | {r['samples']:,} | {r['seconds']:.0f} | {r['rss_first_tenth'] / 2**20:.0f} | "
                         f"{r['rss_last_tenth'] / 2**20:.0f} | {r['growth'] / 2**20:+.1f} |")
        lines.append("")
    return "\n".join(lines)


def write_markdown(report: dict, path: Path) -> None:
    """Replace the text between the bench markers of ``path`` (or append a marked block)."""
    block = f"{START}\n{markdown(report)}\n{END}"
    text = path.read_text() if path.exists() else ""
    if START in text and END in text:
        text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text + ("\n" if text else "") + block + "\n"
    path.write_text(text)
