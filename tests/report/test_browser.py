"""The report in a real browser: headless Chromium renders index.html offline, every <img> decodes
(naturalWidth > 0), no section is empty, and a screenshot is saved next to the report."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fisherkit.report.figures import is_png

pytestmark = pytest.mark.browser

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,4000",
]

# Written into the DOM on `load` (after every image has loaded or failed): counts for the test.
PROBE = """
<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var sections = Array.prototype.slice.call(document.querySelectorAll("section.report-section"));
  var report = {
    images: imgs.length,
    loaded: imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length,
    sections: sections.map(function (s) {
      return {id: s.id, text: s.innerText.trim().length,
              images: s.querySelectorAll("img").length,
              failed: s.querySelectorAll(".error").length};
    })
  };
  var out = document.createElement("pre");
  out.id = "fisherkit-probe";
  out.textContent = "PROBE" + JSON.stringify(report) + "EBORP";
  document.body.appendChild(out);
});
</script>
"""


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [binary, *FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def browser():
    binary = chromium()
    if binary is None:
        pytest.skip("Chromium is not installed and could not be installed (apt-get install -y chromium); "
                    "the browser check of the report is skipped")
    return binary


def test_report_renders_in_chromium(quick_report, browser, tmp_path):
    rc, out, results, _ = quick_report
    assert results is not None, "the demo wrote no results.json"
    page = (out / "index.html").read_text(encoding="utf-8")
    probe_page = out / "index.probe.html"  # a copy with the probe script; the report itself has none
    probe_page.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    try:
        proc = run_chromium(browser, tmp_path / "profile-dom", "--virtual-time-budget=10000", "--dump-dom",
                            probe_page.as_uri())
    finally:
        probe_page.unlink()
    m = re.search(r'<pre id="fisherkit-probe">PROBE(.*?)EBORP</pre>', proc.stdout, re.S)
    assert m, f"Chromium gave no probe output (exit {proc.returncode}): {proc.stderr[-2000:]}"
    report = json.loads(html.unescape(m.group(1)))
    n_figures = sum(len(s["figures"]) for s in results["sections"].values())
    assert report["images"] == n_figures
    assert report["loaded"] == report["images"], f"only {report['loaded']} of {report['images']} images loaded"
    assert [s["id"] for s in report["sections"]] == list(results["sections"])
    for s in report["sections"]:
        assert s["failed"] == 0, f"section {s['id']} shows an error in the page"
        assert s["text"] > 200 and s["images"] >= 1, f"section {s['id']} is empty: {s}"

    shot = out / "screenshot.png"
    proc = run_chromium(browser, tmp_path / "profile-shot", f"--screenshot={shot}", (out / "index.html").as_uri())
    assert shot.is_file(), f"no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}"
    data = shot.read_bytes()
    assert is_png(data)
    assert int.from_bytes(data[16:20], "big") == 1280
    print(f"\nscreenshot: {shot}")
