"""Capacity search: the highest request rate a system carries, by bracketing then bisection.

Fixed steps (1000, 2000, 3000 rps) cannot tell 0.9 of a capacity from 0.5 of it. Here the rate
doubles from ``start`` until a point fails (or halves until one passes), then the bracket
[highest passing, lowest failing] is bisected geometrically until it is within ``rel_tol`` of the
passing rate: the capacity is known to +-``rel_tol``. What "passes" is the caller's: not
saturated (``LoadResult.saturation``) for choosing a safe rate, or a p99 objective with no drops
for a capacity benchmark. A noisy criterion can mislead a bisection, so benchmarks take the
median of several searches.

``probe`` is the short search ``rps: auto`` runs: each point a few seconds, passing when the
point is not saturated and errors stay at or below 1 %.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from workbench.load.results import LoadResult

__all__ = ["Capacity", "Step", "probe", "search"]

MAX_ERROR_PCT = 1.0


@dataclass(frozen=True)
class Step:
    """One measured rate: whether it passed and why (or why not)."""

    rps: float
    ok: bool
    why: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Capacity:
    """The highest passing rate (``rps``, 0 when none passed), the lowest failing one (``upper``,
    inf when none failed up to the limit) and every step, in order."""

    rps: float
    upper: float
    steps: tuple[Step, ...]
    rel_tol: float

    @property
    def resolved(self) -> bool:
        """The bracket is within ``rel_tol`` of the capacity."""
        return self.rps > 0 and math.isfinite(self.upper) and self.upper - self.rps <= self.rel_tol * self.rps

    def explain(self) -> str:
        if self.rps <= 0:
            return (
                f"no rate passed (lowest tried {min(s.rps for s in self.steps):g} rps: {self.steps[-1].why})"
            )
        if not math.isfinite(self.upper):
            return f"at least {self.rps:g} rps (every rate tried passed, up to the limit)"
        tol = "" if self.resolved else " (not resolved)"
        why = self._failed_why()
        return f"{self.rps:g} rps ({self.upper:g} rps did not pass: {why}; ±{self.rel_tol:.0%}{tol})"

    def _failed_why(self) -> str:
        return next((s.why for s in self.steps if s.rps == self.upper and not s.ok), "")


def search(
    measure: Callable[[float], Step],
    start: float,
    *,
    rel_tol: float = 0.05,
    factor: float = 2.0,
    max_rps: float = 100_000.0,
    min_rps: float = 1.0,
    max_steps: int = 30,
) -> Capacity:
    """Bracket from ``start`` (x/÷ ``factor``), then bisect until ``upper - rps <= rel_tol * rps``.

    ``measure(rps)`` runs one point and returns its :class:`Step`. Rates are whole requests per
    second. ``max_steps`` bounds the points measured.
    """
    if start <= 0 or rel_tol <= 0 or factor <= 1:
        raise ValueError("need start > 0, rel_tol > 0 and factor > 1")
    steps: list[Step] = []
    lo, hi = 0.0, math.inf

    def run(rps: float) -> bool:
        step = measure(float(rps))
        steps.append(step)
        return step.ok

    rate = float(round(start))
    if run(rate):
        lo = rate
        while math.isinf(hi) and len(steps) < max_steps:
            rate = float(min(max_rps, round(lo * factor)))
            if rate <= lo:
                break
            if run(rate):
                lo = rate
            else:
                hi = rate
    else:
        hi = rate
        while lo == 0 and len(steps) < max_steps:
            rate = float(max(min_rps, round(hi / factor)))
            if rate >= hi:
                break
            if run(rate):
                lo = rate
            else:
                hi = rate
    while lo > 0 and math.isfinite(hi) and hi - lo > rel_tol * lo and len(steps) < max_steps:
        mid = float(round(math.sqrt(lo * hi)))
        if mid <= lo or mid >= hi:
            break
        if run(mid):
            lo = mid
        else:
            hi = mid
    return Capacity(lo, hi, tuple(steps), rel_tol)


def probe(
    run_point: Callable[[float], LoadResult],
    start: float = 50.0,
    *,
    rel_tol: float = 0.25,
    max_steps: int = 12,
) -> Capacity:
    """The highest rate whose point is not saturated and has <= 1 % errors (see module docstring)."""

    def measure(rps: float) -> Step:
        result = run_point(rps)
        sat = result.saturation()
        errors = result.summary()["error_pct"]
        reasons = list(sat.reasons)
        if errors > MAX_ERROR_PCT:
            reasons.append(f"{errors:.1f} % errors (> {MAX_ERROR_PCT:g} %)")
        why = "; ".join(reasons) if reasons else sat.explain()
        return Step(rps, not reasons, why, {**sat.to_dict(), "error_pct": errors,
                                             "p99_ms": result.summary()["p99"]})  # fmt: skip

    return search(measure, start, rel_tol=rel_tol, max_steps=max_steps)
