"""Statistics that decide whether a difference between two arms is real (see compare.py)."""

from workbench.stats.compare import Comparison, Margin, MetricResult, compare
from workbench.stats.interval import ConfidenceInterval

__all__ = ["Comparison", "ConfidenceInterval", "Margin", "MetricResult", "compare"]
