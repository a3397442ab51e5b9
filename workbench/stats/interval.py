"""``ConfidenceInterval``: the one shape of every interval the workbench returns.

A NamedTuple with ``low`` and ``high``, as scipy.stats returns them
(``res.confidence_interval().low``), so ``lo, hi = ci`` and ``ci.low`` both read well and an
interval is never a bare ``(lo, hi)`` tuple read as ``ci[0]``/``ci[1]``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

__all__ = ["ConfidenceInterval"]


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
