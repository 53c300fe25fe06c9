"""One `fisherkit demo --quick` run shared by the report tests (it is what a person would type)."""

from __future__ import annotations

import json
import time

import pytest
import torch


@pytest.fixture(scope="session")
def quick_report(tmp_path_factory):
    """Run ``fisherkit demo --quick --out DIR --no-progress`` once; return (exit code, DIR, results, seconds)."""
    from fisherkit.cli import main

    torch.set_num_threads(1)  # a shared 2-core machine
    out = tmp_path_factory.mktemp("demo") / "report"
    t0 = time.perf_counter()
    rc = main(["demo", "--quick", "--out", str(out), "--no-progress"])
    seconds = time.perf_counter() - t0
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else None
    print(f"\nfisherkit demo --quick: exit {rc} in {seconds:.1f} s -> {out}")
    return rc, out, results, seconds
