"""Run against run: did a later run regress against an earlier one, given that runs vary?

Two runs never ran at the same time, so their windows cannot be paired: ``stats.compare`` with
``paired=False`` compares their windows (Welch, AR(1)-inflated batch means) — but that interval
only knows the noise *within* each run. Two runs of the same configuration also differ *between*
runs (a fresh mesh, the machine's state, what else ran): windows are nested in runs, and pooling
them hides that variation (DESIGN.md, "Statistics", point 1 — the trial is the unit).

So the run is the unit of replication here:

- each run gives one level per metric (the mean of its window values, as ``compare`` takes it;
  the error rate over all its requests);
- the spread of run levels between repeated runs of one configuration estimates run-to-run
  variation (pooled over configurations: the sample variance of each group's levels, weighted by
  its degrees of freedom, runs − 1 per group);
- the difference B − A of two single runs has variance 2·s² (each run carries its own deviation),
  never less than the windows-only variance; its interval is Student-t with the pooled degrees of
  freedom, at the level ``compare`` uses (1 − 2·alpha / metrics: one-sided claims, Bonferroni);
- the verdict uses ``compare``'s margins and rule (worse / better / equivalent / inconclusive);
  an error rate's interval is never narrower than the per-request Newcombe interval.

Without repeated runs of either configuration run-to-run variation is unknown and the honest
answer is ``inconclusive: one run per side, run-to-run variation unknown`` (the windows-only
difference is still reported, for a person to read).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from workbench.stats.compare import (
    MIN_PER_WINDOW,
    Comparison,
    Margin,
    MetricResult,
    NoData,
    Verdict,
    compare_tables,
)
from workbench.stats.compare import (
    interval_verdict as verdict_against,  # the one rule of intervals vs margins
)
from workbench.stats.interval import ConfidenceInterval

__all__ = ["RunSpread", "RunsComparison", "RunsMetricResult", "compare_runs", "run_level", "run_spread"]

UNKNOWN = "one run per side, run-to-run variation unknown"


def run_level(windows: pd.DataFrame, metric: str) -> float:
    """One run's level of ``metric``: the mean of its window values (windows with enough requests
    for the metric, as ``compare`` uses them), or its error rate in % over all its requests."""
    if len(windows) == 0:
        return math.nan
    count = windows["count"].to_numpy(dtype=float)
    if metric == "error_rate":
        total = float(count.sum())
        return 100.0 * float(windows["errors"].to_numpy(dtype=float).sum()) / total if total else math.nan
    usable = windows[metric].to_numpy(dtype=float)[count >= MIN_PER_WINDOW.get(metric, 5)]
    return float(usable.mean()) if len(usable) else math.nan


@dataclass(frozen=True)
class RunSpread:
    """Run-to-run standard deviation of one metric, pooled over groups of repeated runs."""

    sd: float  # ms, or percentage points for the error rate
    df: int  # sum over groups of (runs - 1); 0: unknown
    runs: int  # runs in groups of two or more

    @property
    def known(self) -> bool:
        return self.df >= 1 and math.isfinite(self.sd)


def run_spread(groups: Sequence[Sequence[float]]) -> RunSpread:
    """Pool the variance of run levels within each group (one group = runs of one configuration)."""
    ss, df, runs = 0.0, 0, 0
    for levels in groups:
        x = np.asarray([v for v in levels if math.isfinite(v)], dtype=float)
        if len(x) >= 2:
            ss += float(np.sum((x - x.mean()) ** 2))
            df += len(x) - 1
            runs += len(x)
    return RunSpread(math.sqrt(ss / df) if df else math.nan, df, runs)


@dataclass(frozen=True)
class RunsMetricResult:
    """One metric of run B against run A, in the manner of scipy.stats results."""

    metric: str
    estimate: float  # B - A: ms, or percentage points for the error rate
    ci: ConfidenceInterval  # with run-to-run variation (NaN ends when it is unknown)
    verdict: Verdict
    method: str
    baseline: float  # A's level
    candidate: float  # B's level
    margin: float
    confidence: float
    spread: RunSpread
    windows: MetricResult  # the windows-only comparison (compare, paired=False)
    unit: str = "ms"
    note: str = ""

    @property
    def regressed(self) -> bool:
        return self.verdict == "worse"

    def explain(self) -> str:
        """One sentence: the difference, its interval with run-to-run variation, the verdict."""
        name = "error rate" if self.metric == "error_rate" else self.metric
        unit = " points" if self.unit == "pts" else " ms"
        w = self.windows
        seen = (f"{w.estimate:+.3g}{unit} [{w.ci.low:+.3g}, {w.ci.high:+.3g}] from windows alone"
                if w.ci.finite else w.note or "no windows to compare")  # fmt: skip
        if self.note:
            return f"{name}: {seen}; {self.note}: {self.verdict}"
        lo, hi = self.ci
        return (
            f"{name} {self.estimate:+.3g}{unit} [{lo:+.3g}, {hi:+.3g}] with run-to-run variation "
            f"(sd {self.spread.sd:.2g}{unit} from {self.spread.runs} repeated runs) against the "
            f"±{self.margin:.3g}{unit} margin: {self.verdict}"
        )


@dataclass
class RunsComparison(Comparison):
    """Per-metric results of run B against run A: a ``Comparison`` (indexable by metric name, an
    overall verdict) whose results are ``RunsMetricResult`` and whose windows are never paired."""

    results: dict[str, RunsMetricResult]  # type: ignore[assignment]

    def to_frame(self) -> pd.DataFrame:
        rows = [
            {
                "metric": r.metric, "baseline": r.baseline, "candidate": r.candidate, "estimate": r.estimate,
                "ci_low": r.ci.low, "ci_high": r.ci.high, "windows_ci_low": r.windows.ci.low,
                "windows_ci_high": r.windows.ci.high, "run_sd": r.spread.sd, "repeats": r.spread.runs,
                "margin": r.margin, "verdict": r.verdict, "unit": r.unit, "method": r.method,
                "explanation": r.explain(),
            }
            for r in self
        ]  # fmt: skip
        return pd.DataFrame(rows).set_index("metric")


def compare_runs(
    a: pd.DataFrame,
    b: pd.DataFrame,
    repeats: Sequence[Sequence[pd.DataFrame]] = (),
    metrics: Sequence[str] = ("p50", "p90", "p99", "error_rate"),
    window_s: float = 5.0,
    margin: Margin | None = None,
    alpha: float = 0.05,
    no_data: NoData = "inconclusive",
) -> RunsComparison:
    """Did run ``b`` regress against run ``a``? See the module docstring.

    ``a``, ``b``: each run's window table (``windows.window_table``). ``repeats``: groups of window
    tables, one group per configuration, each holding every stored run of it (``a`` and ``b`` may
    be among them); groups of one run tell nothing about run-to-run variation.
    """
    margin = margin or Margin()
    windows = compare_tables(a, b, metrics, window_s, margin, alpha, paired=False, no_data=no_data)
    level = 1 - 2 * alpha / len(metrics)
    results = {}
    for metric in metrics:
        w = windows[metric]
        spread = run_spread([[run_level(t, metric) for t in group] for group in repeats])
        results[metric] = _judge(metric, w, run_level(a, metric), run_level(b, metric), spread, margin, level)
    return RunsComparison(results, paired=False, window_s=window_s, alpha=alpha, windows={"a": a, "b": b})


def _judge(
    metric: str, w: MetricResult, base: float, cand: float, spread: RunSpread, margin: Margin, level: float
) -> RunsMetricResult:
    unit = "pts" if metric == "error_rate" else "ms"
    m = margin.error_rate_pct if metric == "error_rate" else margin.latency(base)
    est = cand - base
    if not w.ci.finite and w.note:  # too little data in a run: compare's no_data verdict and reason
        return RunsMetricResult(metric, est, ConfidenceInterval.none(), w.verdict, "no data", base, cand, m,
                                level, spread, w, unit, note=w.note)  # fmt: skip
    if not spread.known:
        return RunsMetricResult(metric, est, ConfidenceInterval.none(), "inconclusive",
                                "windows only (one run per side)", base, cand, m, level, spread, w, unit,
                                note=UNKNOWN)  # fmt: skip
    t = float(sps.t.ppf(0.5 + level / 2, spread.df))
    half = t * spread.sd * math.sqrt(2)
    lo, hi = est - half, est + half
    if w.ci.finite:  # never narrower than what the windows alone say (nor than Newcombe for errors)
        lo, hi = min(lo, w.ci.low), max(hi, w.ci.high)
    ci = ConfidenceInterval(lo, hi)
    method = (f"runs as the unit: t with run-to-run sd {spread.sd:.3g} from {spread.runs} repeated runs "
              f"({spread.df} df), not narrower than the windows' interval")  # fmt: skip
    verdict = verdict_against(ci, m)
    return RunsMetricResult(metric, est, ci, verdict, method, base, cand, m, level, spread, w, unit)
