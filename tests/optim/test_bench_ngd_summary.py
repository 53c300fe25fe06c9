"""benchmarks/bench_ngd.py's bookkeeping, on hand-made curves: the target rule fixed before a run, steps /
wall / CPU seconds to it, the median over seeds with a seed that never got there counted as +∞, and the
learning-rate schedule every optimizer of a run shares."""

import importlib.util
import math
import os
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_ngd.py"


@pytest.fixture(scope="module")
def bench():
    before = os.environ.get("TORCHDYNAMO_DISABLE")
    import sys

    sys.path.insert(0, str(BENCH.parent))
    try:
        spec = importlib.util.spec_from_file_location("bench_ngd_under_test", BENCH)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(BENCH.parent))
        if before is None:
            os.environ.pop("TORCHDYNAMO_DISABLE", None)
        else:
            os.environ["TORCHDYNAMO_DISABLE"] = before
    return mod


def test_median_counts_a_seed_that_never_got_there_as_infinite(bench):
    assert bench.median_or_none([300, 500, None]) == 500  # not the median of the two that got there (400)
    assert bench.median_or_none([300, None, None]) is None
    assert bench.median_or_none([300, 500, 700]) == 500
    assert bench.median_or_none([300, None]) is None  # even count: the mean of 300 and ∞
    assert bench.median_or_none([300, None], strict=False) == 300  # result files before target_rule


def _curve(vals, every=10, sec=0.5, cpu=0.25):
    return [(i * every, i * every * sec, v, i * every * cpu) for i, v in enumerate(vals)]


def test_target_rule_and_ratios(bench):
    adam = [_curve([3.0, 2.5, 2.2, 2.0, 2.1]), _curve([3.0, 2.6, 2.3, 2.1, 2.05]), _curve([3.0, 2.7, 2.4, 2.2, 2.3])]
    fast = [_curve([3.0, 2.2, 2.0, 1.9, 1.9], sec=1.0, cpu=0.5)] * 3
    out = {"steps": 40, "target_rule": {"rule": "best", "margin": 1.0},
           "methods": {"adamw": {"curves": adam}, "kfac": {"curves": fast}}}
    bench.summarise(out)
    assert out["target"] == pytest.approx(2.05)  # the median of the bests 2.0, 2.05, 2.2
    a, k = out["methods"]["adamw"], out["methods"]["kfac"]
    assert a["steps_to_target"] == 40  # seeds at 30, 40 and never: the median is 40
    assert k["steps_to_target"] == 20 and k["steps_ratio"] == pytest.approx(0.5)
    assert k["time_ratio"] == pytest.approx(20 * 1.0 / (40 * 0.5))
    assert k["cpu_ratio"] == pytest.approx(20 * 0.5 / (40 * 0.25))
    assert k["cpu_ms_per_step"] == pytest.approx(500.0)
    out["target_rule"] = {"rule": "best", "margin": 1.1}
    bench.summarise(out)
    assert out["target"] == pytest.approx(2.255)


def test_old_result_files_keep_their_rule(bench):
    """A file without target_rule (or CPU column) renders as it was written: AdamW's median final."""
    adam = [[(0, 0.0, 3.0), (10, 1.0, 2.5)], [(0, 0.0, 3.0), (10, 1.0, 2.7)]]
    out = {"steps": 10, "methods": {"adamw": {"curves": adam}}}
    bench.summarise(out)
    assert out["target"] == pytest.approx(2.6)
    assert out["methods"]["adamw"]["cpu_ms_per_step"] is None


def test_schedule_is_warmup_then_cosine(bench):
    assert bench.schedule_factor("const", 100) is None
    f = bench.schedule_factor("cosine", 100)
    assert f(0) == pytest.approx(0.1 * 0.5 * (1 + math.cos(0)))
    assert f(9) == pytest.approx(0.5 * (1 + math.cos(math.pi * 9 / 100)))
    assert f(50) == pytest.approx(0.5) and f(100) == pytest.approx(0.0, abs=1e-12)
