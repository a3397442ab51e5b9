"""``ConfidenceInterval``: the one shape of every interval the workbench returns.

A NamedTuple with ``low`` and ``high``, as scipy.stats returns them
(``res.confidence_interval().low``), so ``lo, hi = ci`` and ``ci.low`` both read well and an
interval is never a bare ``(lo, hi)`` tuple read as ``ci[0]``/``ci[1]``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

__all__ = ["ConfidenceInterval", "difference"]


class ConfidenceInterval(NamedTuple):
    """A two-sided interval ``[low, high]`` (NaN ends: no interval could be computed)."""

    low: float
    high: float

    @classmethod
    def none(cls) -> ConfidenceInterval:
        """The interval of an estimate that has none (too little data): both ends NaN."""
        return cls(math.nan, math.nan)

    @property
    def finite(self) -> bool:
        """Both ends are numbers."""
        return math.isfinite(self.low) and math.isfinite(self.high)

    def contains(self, value: float) -> bool:
        """``low <= value <= high``."""
        return self.low <= value <= self.high


def difference(
    a: float, a_ci: ConfidenceInterval, b: float, b_ci: ConfidenceInterval
) -> tuple[float, ConfidenceInterval]:
    """``a - b`` and its interval, from two *independent* estimates with intervals at one level.

    MOVER (method of variance estimates recovery; Zou & Donner 2008, the construction of
    Newcombe's interval for two proportions): each end combines the distance of each estimate to
    the end of its own interval on the side that matters, so asymmetric intervals stay asymmetric.
    Used to ask whether two measurements of one effect agree (the interval holds 0), which a point
    estimate falling inside the other's interval does not answer: that ignores the point's own
    noise and fails far more often than the level says.
    """
    d = a - b
    low = d - math.hypot(a - a_ci.low, b_ci.high - b)
    high = d + math.hypot(a_ci.high - a, b - b_ci.low)
    return d, ConfidenceInterval(low, high)
