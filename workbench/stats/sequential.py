"""Sequential decisions for staged canaries: promote, continue or roll back at every step.

Looking at the data after every canary step and rolling back on the first "worse" inflates false
alarms: with five looks at 5 % each, about one canary in five would be rolled back for nothing.
``SequentialTest`` spends the error budget across the declared number of looks (an
alpha-spending plan; by default equal shares, Pocock-like): look k may claim "worse" only at
level alpha_k, with sum(alpha_k) = alpha. By the union bound the chance of any false rollback
over all steps stays <= alpha, whatever the correlation between looks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from workbench.stats.compare import Comparison, Margin, NoData, compare
from workbench.stats.windows import WindowInput

Action = Literal["promote", "continue", "rollback", "inconclusive"]


@dataclass
class Decision:
    """What to do after one look, why, and how much of the error budget this look used."""

    look: int
    action: Action
    reasons: list[str]
    alpha_spent: float
    comparison: Comparison


@dataclass
class SequentialTest:
    """Declared looks (canary steps) sharing one false-rollback budget ``alpha``.

    ``weights`` (optional, one per look) spend the budget in proportion, e.g. to each step's
    planned duration; equal shares otherwise.
    """

    looks: int
    metrics: Sequence[str] = ("p50", "p99", "error_rate")
    margin: Margin = field(default_factory=Margin)
    alpha: float = 0.05
    window: str | float = "5s"
    no_data: NoData = "inconclusive"
    weights: Sequence[float] | None = None
    decisions: list[Decision] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.looks < 1:
            raise ValueError(f"looks must be >= 1 (got {self.looks})")
        if self.weights is not None and (len(self.weights) != self.looks or min(self.weights) <= 0):
            raise ValueError(f"weights must be {self.looks} positive numbers (got {list(self.weights)})")

    def alpha_at(self, look: int) -> float:
        """The share of alpha look ``look`` (1-based) may spend."""
        weights = list(self.weights) if self.weights is not None else [1.0] * self.looks
        return self.alpha * weights[look - 1] / sum(weights)

    def look(self, baseline: WindowInput, canary: WindowInput) -> Decision:
        """Judge everything collected so far (both arms, cumulative) at the next look."""
        k = len(self.decisions) + 1
        if k > self.looks:
            raise RuntimeError(f"all {self.looks} declared looks are used; declare more looks up front")
        spent = self.alpha_at(k)
        comparison = compare(
            baseline, canary, metrics=self.metrics, window=self.window, margin=self.margin,
            alpha=spent, no_data=self.no_data,
        )  # fmt: skip
        worse = [r.explain() for r in comparison if r.verdict == "worse"]
        open_ = [r.explain() for r in comparison if r.verdict == "inconclusive"]
        final = k == self.looks
        if worse:
            action: Action = "rollback"
            reasons = worse
        elif not open_:
            action, reasons = ("promote", [r.explain() for r in comparison]) if final else (
                "continue", [r.explain() for r in comparison])  # fmt: skip
        else:
            action, reasons = ("inconclusive" if final else "continue"), open_
        decision = Decision(k, action, reasons, spent, comparison)
        self.decisions.append(decision)
        return decision
