"""Choosing ``update_every`` / ``inv_every`` from measured cost (``NaturalGradient(curvature_budget=β)``).

A step of the natural gradient costs the user's forward/backward plus the preconditioning solve
(time b, every step), plus — on statistics steps — the recorder's extra backward and the
accumulator's sums (c_u more), plus — on inverse steps — the eigendecompositions (c_r more). With
statistics every k_u steps and inverses every k_i steps the curvature overhead is
c_u/k_u + c_r/k_i; keeping each term ≤ β/2 · b gives

    k_u = ⌈2 c_u / (β b)⌉,   k_i = k_u · ⌈2 c_r / (β b k_u)⌉   (k_i a multiple of k_u, both ≤ ``max_every``).

The three times are moving averages of the wall time from the end of one ``step()`` to the end of
the next, split by what the second did, so the recorder's work during the forward is counted where it happens. The intervals
are re-chosen after every inverse refresh. Timing is not reproducible: a run with a budget is not
bit-reproducible (fix the intervals it chose, ``opt.pre.update_every`` / ``inv_every``, for that), and
it is refused under torch.distributed (ranks would choose different intervals).
"""

from __future__ import annotations

import math
import time


def _ceil(x: float) -> int:
    """⌈x⌉, forgiving rounding error (4.000000000000004 → 4)."""
    return math.ceil(x * (1 - 1e-9))


class Amortiser:
    """Measures step times by kind (plain / statistics / inverse) and re-chooses the intervals."""

    def __init__(self, budget: float, max_every: int = 200, clock=time.perf_counter, decay: float = 0.8):
        self.budget, self.max_every, self.clock, self.decay = budget, max_every, clock, decay
        self.times = {}  # "plain" | "stats" | "inverse" -> moving average of the step-to-step time
        self._last = None  # clock at the end of the previous step

    def tick(self, kind: str) -> None:
        """Call at the end of every step with the kind of work it did; the time since the end of the previous
        step (the user's forward/backward, with the recorder's work, and this step) is counted for ``kind``."""
        now = self.clock()
        if self._last is not None:
            dt = now - self._last
            old = self.times.get(kind)
            self.times[kind] = dt if old is None else self.decay * old + (1 - self.decay) * dt
        self._last = now

    def choose(self, pre) -> None:
        """Set ``pre.update_every`` / ``pre.inv_every`` from the measured times (once all three are known)."""
        if not all(k in self.times for k in ("plain", "stats", "inverse")):
            return
        b = self.times["plain"]
        c_u = max(self.times["stats"] - b, 0.0)
        c_r = max(self.times["inverse"] - self.times["stats"], 0.0)
        share = 0.5 * self.budget * max(b, 1e-12)
        k_u = min(self.max_every, max(1, _ceil(c_u / share)))
        k_i = k_u * max(1, _ceil(c_r / (share * k_u)))
        pre.update_every, pre.inv_every = k_u, min(k_i, k_u * max(1, self.max_every // k_u))

    def state(self) -> dict:
        return {"times": dict(self.times)}
