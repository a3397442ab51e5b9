"""Sequential decisions for canaries and live A/B tests: promote, continue or roll back at every look.

Looking at the data again and again and rolling back on the first "worse" inflates false alarms:
with a fixed-sample test at 5 % after each of twelve windows, far more than one canary in twenty
would be rolled back for nothing. Two ways to keep the false-rollback rate over all looks <= alpha:

- ``AnytimeTest`` (the default for canaries): confidence sequences (``boundaries.Anytime``). Look
  whenever you like — after every window, any number of times — and stop at any time; every look's
  intervals hold simultaneously over all looks. Each look is ``compare``'s decision (windows as
  the unit, one-sided tests of "worse than +margin", Holm's step-down across metrics, intervals at
  the level each metric was decided at) with confidence-sequence boundaries in place of Student t.
  Holm on anytime-valid p-values keeps the chance of any false "worse" at any look <= alpha: a false
  rejection at some look needs some true hypothesis' p-value to fall below alpha / k0 at some look,
  which for each of the k0 true ones has chance <= alpha / k0 (Ville's inequality).
  ``look_each_window`` looks after every window of new data, as a canary that reacts at once does.
  For an analyst watching a live A/B in a notebook: ``AnytimeTest(...).look(a, b)`` whenever new data
  is in; the verdicts and intervals are valid however often that is done.
- ``SequentialTest`` (``sequential: alpha-spending``): the number of looks is declared up front and
  the error budget is spent across them (by default equal shares, Pocock-like; ``weights`` in
  proportion, e.g. to each step's duration): look k may claim "worse" only at level alpha_k with
  sum(alpha_k) = alpha, so by the union bound the chance of any false rollback stays <= alpha. A
  look beyond the declared ones is refused.

A look that is not the last says ``rollback`` when a metric is worse and ``continue`` otherwise;
the final look says ``promote`` when every metric is equivalent or better, else ``inconclusive``
(or ``rollback``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from workbench.stats import estimates as est
from workbench.stats import exceedance
from workbench.stats.boundaries import Anytime
from workbench.stats.compare import (
    Comparison,
    Evidence,
    Margin,
    NoData,
    check_arguments,
    compare,
    judge_pair,
    window_tables,
)
from workbench.stats.estimates import Pair
from workbench.stats.windows import WindowInput
from workbench.units import parse_duration

Action = Literal["promote", "continue", "rollback", "inconclusive"]
Plan = Literal["anytime", "alpha-spending"]
PLANS: tuple[Plan, ...] = ("anytime", "alpha-spending")


@dataclass
class Decision:
    """What to do after one look, why, and the error budget behind it.

    ``alpha_spent``: what this look added to the error budget spent so far: its share of alpha
    (alpha-spending); a confidence sequence commits all of alpha at its first look, which then
    covers every later look, so they add 0. ``windows``: the windows the look saw (so far, both
    arms); ``window``: the number of the last of them (None when unknown)."""

    look: int
    action: Action
    reasons: list[str]
    alpha_spent: float
    comparison: Comparison
    windows: int = 0
    window: int | None = None


def _act(comparison: Comparison, final: bool) -> tuple[Action, list[str]]:
    """The action a look's comparison calls for, and the explanations behind it."""
    worse = [r.explain() for r in comparison if r.verdict == "worse"]
    open_ = [r.explain() for r in comparison if r.verdict == "inconclusive"]
    if worse:
        return "rollback", worse
    if open_:
        return ("inconclusive" if final else "continue"), open_
    return ("promote" if final else "continue"), [r.explain() for r in comparison]


@dataclass
class AnytimeTest:
    """Anytime-valid looks (confidence sequences): look as often as you like, stop whenever.

    ``optimise_at``: the amount of data (a duration, or seconds) at which the boundary is tightest;
    decisions are possible before and after it, only a little less sharply (a canary step's length
    is a good choice; default one minute)."""

    metrics: Sequence[str] = ("p50", "p99", "error_rate")
    margin: Margin = field(default_factory=Margin)
    alpha: float = 0.05
    window: str | float = "5s"
    no_data: NoData = "inconclusive"
    optimise_at: str | float = "60s"
    decisions: list[Decision] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_arguments(self.metrics, self.alpha)
        self.window_s = parse_duration(self.window)
        windows = parse_duration(self.optimise_at) / self.window_s
        self.rule = Anytime(optimise_at=max(windows, 1.0), alpha=self.alpha)

    def look(self, baseline: WindowInput, candidate: WindowInput, final: bool = False) -> Decision:
        """Judge everything collected so far (both arms, cumulative)."""
        tables = window_tables(baseline, candidate, self.window_s, exceed=self.margin)
        return self.look_tables(*tables, final=final)

    def look_tables(self, wa: pd.DataFrame, wb: pd.DataFrame, final: bool = False) -> Decision:
        """``look`` on ready window tables (``compare.window_tables``; made with ``exceed=`` this
        test's margin, the tail metrics' exceedance evidence joins their confidence sequences)."""
        return self._look(Pair.of(wa, wb, self.metrics), final, {"a": wa, "b": wb})

    def look_each_window(
        self, wa: pd.DataFrame, wb: pd.DataFrame, after: int | None = None, final: bool = False
    ) -> list[Decision]:
        """One look after each window past window number ``after`` (all when None), each on the data up
        to that window; stops at the first look that does not say ``continue``. ``final`` makes the
        look at the last window the final one. Returns the looks made (none when no new window)."""
        pair = Pair.of(wa, wb, self.metrics)
        first = int(np.searchsorted(pair.window, after, side="right")) if after is not None else 0
        made: list[Decision] = []
        for k in range(first + 1, len(pair.window) + 1):
            last = k == len(pair.window)
            w = pair.window[k - 1]
            d = self._look(pair.upto(k), final and last, {"a": wa.loc[:w], "b": wb.loc[:w]})
            made.append(d)
            if d.action != "continue":
                break
        return made

    def _look(self, pair: Pair, final: bool, windows: dict[str, pd.DataFrame] | None) -> Decision:
        evidence = tail_evidence(pair, self.metrics, self.rule)
        comparison = judge_pair(pair, self.metrics, self.window_s, self.margin, self.alpha, "auto",
                                self.no_data, self.rule, windows, evidence)  # fmt: skip
        action, reasons = _act(comparison, final)
        last = int(pair.window[-1]) if len(pair.window) else None
        spent = 0.0 if self.decisions else self.alpha
        decision = Decision(
            len(self.decisions) + 1, action, reasons, spent, comparison, len(pair.window), last
        )
        self.decisions.append(decision)
        return decision


def tail_evidence(pair: Pair, metrics: Sequence[str], rule: Anytime) -> dict[str, Evidence]:
    """For each tail metric whose exceedance counts the candidate's windows carry (``exceedance.py``),
    the confidence sequence's e-value of "the candidate's share above the window's quantile (+ margin)
    exceeds the baseline's share above it", over the windows of ``pair``. Only for concurrent arms."""
    out: dict[str, Evidence] = {}
    if not pair.concurrent:
        return out
    for m in metrics:
        if m not in exceedance.TAIL_METRICS or not exceedance.has_columns(pair.b, m):
            continue
        shares = Pair(
            pair.window,
            {"count": pair.a["count"], "errors": pair.b[exceedance.column(m, "a")]},
            {"count": pair.b["count"], "errors": pair.b[exceedance.column(m, "b")]},
        )
        e = est.error_rate(shares, paired=True)
        if not e.ok:
            continue
        note = (
            f"the tail-exceedance test ({e.candidate:.2f} % of the candidate's requests above each window's "
            f"{m} + margin vs {e.baseline:.2f} % of the baseline's above it, {e.n_windows} windows)"
        )
        out[m] = Evidence(e.log_evalue(0.0, rule), note)
    return out


@dataclass
class SequentialTest:
    """Alpha-spending: declared looks (canary steps) sharing one false-rollback budget ``alpha``.

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
        """Judge everything collected so far (both arms, cumulative) at the next declared look."""
        k = len(self.decisions) + 1
        if k > self.looks:
            raise RuntimeError(f"all {self.looks} declared looks are used; declare more looks up front")
        spent = self.alpha_at(k)
        comparison = compare(
            baseline, canary, metrics=self.metrics, window=self.window, margin=self.margin,
            alpha=spent, no_data=self.no_data,
        )  # fmt: skip
        action, reasons = _act(comparison, final=k == self.looks)
        wa, wb = comparison.windows.get("a"), comparison.windows.get("b")
        windows = wa.index.union(wb.index) if wa is not None and wb is not None else pd.Index([])
        last = int(windows.max()) if len(windows) else None
        decision = Decision(k, action, reasons, spent, comparison, len(windows), last)
        self.decisions.append(decision)
        return decision


AlphaSpendingTest = SequentialTest  # the name that says what it does
