"""Statistics that decide whether a difference between two arms is real (see compare.py).

``compare`` judges data seen once; ``AnytimeTest`` judges data as it comes in — look after every
window, as often as you like (confidence sequences; what a canary or an analyst watching a live A/B
needs); ``SequentialTest`` spends alpha over declared looks.
"""

from workbench.stats.compare import Comparison, Margin, MetricResult, compare, compare_tables
from workbench.stats.interval import ConfidenceInterval
from workbench.stats.sequential import AnytimeTest, Decision, SequentialTest

__all__ = [
    "AnytimeTest", "Comparison", "ConfidenceInterval", "Decision", "Margin", "MetricResult", "SequentialTest",
    "compare", "compare_tables",
]  # fmt: skip
