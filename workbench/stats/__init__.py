"""Statistics that decide whether a difference between two arms is real (see compare.py)."""

from workbench.stats.compare import Comparison, Margin, MetricResult, compare

__all__ = ["Comparison", "Margin", "MetricResult", "compare"]
