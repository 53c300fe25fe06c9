"""One `fisherkit demo --quick` run shared by the report tests (it is what a person would type)."""

from __future__ import annotations

import json
import time

import pytest
import torch


@pytest.fixture(scope="session")
def quick_report(tmp_path_factory):
    """Run ``fisherkit demo --quick --out DIR --no-progress`` once.

    Returns (exit code, DIR, results.json as a dict, {"wall": s, "cpu": s}); CPU seconds are what a
    time budget can be checked against on a machine shared with other jobs.
    """
    from fisherkit.cli import main

    torch.set_num_threads(1)  # a shared 2-core machine
    out = tmp_path_factory.mktemp("demo") / "report"
    t0, c0 = time.perf_counter(), time.process_time()
    rc = main(["demo", "--quick", "--out", str(out), "--no-progress"])
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else None
    print(f"\nfisherkit demo --quick: exit {rc} in {seconds:.1f} s wall, {cpu:.1f} s CPU -> {out}")
    return rc, out, results, {"wall": seconds, "cpu": cpu}
