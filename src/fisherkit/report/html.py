"""The report as one self-contained HTML file: inline CSS, PNGs embedded as base64 ``data:`` URIs,
no scripts, no external resources — it opens offline and can be mailed as a single file.
"""

from __future__ import annotations

import base64
import html
from typing import Any

from .registry import SectionResult, flat_numbers

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1.2em; color: #222; line-height: 1.5; }
h1 { margin-bottom: 0.1em; } h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
.meta { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; margin: 0.8em 0; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f5f5f5; }
table.small { font-size: 0.9em; }
td.num { font-family: ui-monospace, monospace; text-align: right; }
.ok { color: #1a7f37; font-weight: 600; } .failed { color: #c62828; font-weight: 600; }
.error { background: #fdecea; border-left: 4px solid #c62828; padding: 0.6em 1em; white-space: pre-wrap;
         font-family: ui-monospace, monospace; font-size: 0.85em; overflow-x: auto; }
figure { display: inline-block; margin: 0.6em 1em 0.6em 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; }
code { background: #f3f3f3; padding: 0 0.25em; border-radius: 3px; }
details { margin: 0.6em 0; } summary { cursor: pointer; color: #555; }
"""


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for embedding a PNG in the page."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _number_cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return html.escape(str(v))


def numbers_table(numbers: dict, limit: int = 400) -> str:
    """All of a section's numbers as a two-column table (flattened keys), inside a <details>."""
    flat = flat_numbers(numbers)
    if not flat:
        return ""
    rows = [f"<tr><td>{html.escape(k)}</td><td class='num'>{_number_cell(v)}</td></tr>"
            for k, v in list(flat.items())[:limit]]
    more = f"<p class='meta'>… {len(flat) - limit} more in results.json</p>" if len(flat) > limit else ""
    return (f"<details><summary>All numbers of this section ({len(flat)})</summary>"
            f"<table class='small'><tr><th>name</th><th>value</th></tr>{''.join(rows)}</table>{more}</details>")


def render_section(res: SectionResult, images: dict[str, bytes]) -> str:
    """One <section>: title, status, text, figures (embedded), error box, numbers."""
    parts = [f"<section id='{html.escape(res.key)}' class='report-section'>",
             f"<h2>{html.escape(res.title)}</h2>"]
    status = "<span class='ok'>ok</span>" if res.ok else "<span class='failed'>failed</span>"
    parts.append(f"<p class='meta'>{status} · {res.seconds:.1f} s</p>")
    if res.error:
        detail = res.traceback or res.error
        parts.append(f"<div class='error'>This section failed: {html.escape(res.error)}\n\n{html.escape(detail)}</div>")
    if res.text:
        parts.append(f"<div class='text'>{res.text}</div>")
    for name, png in images.items():
        file = res.files.get(name, f"{name}.png")
        parts.append(f"<figure><img src='{data_uri(png)}' alt='{html.escape(name)}'>"
                     f"<figcaption>{html.escape(name)} ({html.escape(file)})</figcaption></figure>")
    parts.append(numbers_table(res.numbers))
    parts.append("</section>")
    return "\n".join(parts)


def render(sections: list[SectionResult], images: dict[str, dict[str, bytes]], meta: dict) -> str:
    """The whole page. ``images[section_key][figure_name]`` are PNG bytes; ``meta`` describes the run."""
    summary_rows = "".join(
        f"<tr><td><a href='#{html.escape(s.key)}'>{html.escape(s.title)}</a></td>"
        f"<td>{'<span class=ok>ok</span>' if s.ok else '<span class=failed>failed</span>'}</td>"
        f"<td class='num'>{s.seconds:.1f} s</td><td>{html.escape(s.headline if s.ok else s.error or '')}</td></tr>"
        for s in sections
    )
    meta_line = " · ".join(f"{html.escape(str(k))}: {html.escape(str(v))}" for k, v in meta.items())
    body = "\n".join(render_section(s, images.get(s.key, {})) for s in sections)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>fisherkit demo report</title>
<style>{CSS}</style>
</head>
<body>
<h1>fisherkit — a tour of Fisher information</h1>
<p class="meta">{meta_line}</p>
<p>Each section below was computed by this run; the numbers are also in <code>results.json</code>
and every plot is saved beside this page as a PNG.</p>
<table><tr><th>section</th><th>status</th><th>time</th><th>headline</th></tr>{summary_rows}</table>
{body}
</body>
</html>
"""
