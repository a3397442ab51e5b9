"""Two-arm comparison: did b (candidate) change latency or errors against a (baseline)?

The method (../shared/DESIGN.md, "Statistics"):

1. Windows, not requests, are the unit (``windows.py``), for latency and error rates alike. When
   both arms ran at the same time their windows are paired; otherwise each arm's windows are
   compared (Welch). How each metric's difference and standard error are made is in
   ``estimates.py``: batch means over windows with the variance inflated for lag-1
   autocorrelation, (1 + rho) / (1 - rho), and Student t with n - 1 degrees of freedom; error rates
   as per-window counts with window-clustered (burst-aware) variance, never narrower than
   Newcombe's per-request score interval.
2. Effect against a practical margin. For each metric the one-sided test of "worse": H0 "b - a <=
   +margin" against "b - a > +margin" (latency margin = max(latency_ms, latency_pct % of the
   baseline); error rates: error_rate_pct points). ``pvalue`` is that test's p-value.
3. Several metrics: Holm's step-down on those one-sided p-values at ``alpha`` decides which
   metrics are ``worse`` (the chance of any false ``worse`` stays <= alpha);
   ``pvalue_adjusted`` is the Holm-adjusted p-value, so a metric is worse exactly when
   ``pvalue_adjusted <= alpha``. Each metric's interval is reported at the level its test was
   decided at — one-sided alpha / (k - j + 1) at each end for the j-th smallest p-value while Holm
   rejects, the level of the first metric it does not reject for the rest — so the interval agrees
   with the verdict: ``worse`` when the whole interval lies beyond +margin; ``better`` when it lies
   beyond -margin; ``equivalent`` inside +-margin; else ``inconclusive``. (``equivalent`` overall —
   every metric equivalent — is an intersection-union test: wrong with chance <= alpha.)
4. ``compare`` judges data seen once (fixed-sample t). A canary or an analyst looking again and
   again uses ``sequential.AnytimeTest``: the same decisions with confidence-sequence boundaries
   (``boundaries.py``) that hold over any number of looks.
5. An arm without traffic (or with fewer than 3 usable windows) follows ``no_data``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from workbench.stats import estimates as est
from workbench.stats import exceedance
from workbench.stats.boundaries import Anytime, FixedSample, Rule
from workbench.stats.estimates import MIN_PER_WINDOW, MIN_WINDOWS, Estimate, Pair
from workbench.stats.interval import ConfidenceInterval
from workbench.stats.multiple import holm, holm_levels
from workbench.stats.windows import QUANTILE_METRICS, WindowInput, as_samples, start_of, window_table
from workbench.units import parse_duration

__all__ = [
    "MIN_PER_WINDOW", "MIN_WINDOWS", "Comparison", "Margin", "MetricResult", "compare", "compare_tables",
    "interval_verdict",
]  # fmt: skip

Verdict = Literal["worse", "better", "equivalent", "inconclusive"]
NoData = Literal["fail", "pass", "inconclusive"]
NO_DATA_VERDICT: dict[str, Verdict] = {"fail": "worse", "pass": "equivalent", "inconclusive": "inconclusive"}
METRICS = (*QUANTILE_METRICS, "mean", "error_rate")


@dataclass(frozen=True)
class Margin:
    """Practical margins: latency beyond max(ms, pct of baseline), errors beyond points."""

    latency_ms: float = 1.0
    latency_pct: float = 5.0
    error_rate_pct: float = 0.5

    def latency(self, baseline_ms: float) -> float:
        base = abs(baseline_ms) if math.isfinite(baseline_ms) else 0.0
        return max(self.latency_ms, self.latency_pct / 100.0 * base)

    def of(self, metric: str, baseline: float) -> float:
        """The margin of ``metric`` given the baseline's value."""
        return self.error_rate_pct if metric == "error_rate" else self.latency(baseline)


@dataclass(frozen=True)
class MetricResult:
    """One metric's comparison, in the manner of scipy.stats results.

    ``pvalue``: one-sided p-value of H0 "b - a <= +margin" (the test of ``worse``);
    ``pvalue_adjusted``: Holm-adjusted across the comparison's metrics (worse iff <= alpha);
    ``ci``: two-sided at ``confidence``, each end a one-sided bound at the level Holm decided the
    metric at."""

    metric: str
    estimate: float  # b - a, ms (latency) or percentage points (error_rate)
    ci: ConfidenceInterval
    pvalue: float
    verdict: Verdict
    method: str
    n_windows: int
    baseline: float  # a's value (ms, or error % for error_rate)
    candidate: float
    margin: float
    confidence: float
    pvalue_adjusted: float = float("nan")
    unit: str = "ms"
    note: str = ""

    @property
    def ratio(self) -> float:
        """candidate / baseline (NaN when the baseline is 0)."""
        return self.candidate / self.baseline if self.baseline else float("nan")

    def explain(self) -> str:
        """One plain sentence: what changed, how sure, against which margin, and the verdict."""
        name = "error rate" if self.metric == "error_rate" else self.metric
        unit = " points" if self.unit == "pts" else " ms"
        if self.note:
            return f"{name}: {self.note}: {self.verdict}"
        lo, hi = self.ci
        direction = "rose" if self.estimate > 0 else "fell" if self.estimate < 0 else "did not change"
        size = f"{abs(self.estimate):.3g}{unit}" if self.estimate else ""
        rel = f" ({self.baseline:.3g} → {self.candidate:.3g}{'%' if self.unit == 'pts' else ' ms'})"
        interval = f" [{lo:+.3g}, {hi:+.3g}]"
        margin = f"{self.margin:.3g}{unit}"
        reading = {
            "worse": f"beyond the {margin} margin",
            "better": f"beyond the {margin} margin, for the better",
            "equivalent": f"inside the ±{margin} margin",
            "inconclusive": f"the interval reaches across the ±{margin} margin; more data would decide",
        }[self.verdict]
        how = ""
        if self.metric == "error_rate":  # the method matters here: bursts make requests dependent
            basis = ("Newcombe's per-request score interval: too few errors for the windows to say more"
                     if "score interval decides" in self.method
                     else "between-window variance of the error counts")  # fmt: skip
            how = f" ({self.n_windows} windows; {basis})"
        if self.verdict == "worse" and lo <= self.margin and "tail-exceedance test (" in self.method:
            # decided by the exceedance evidence (stats/exceedance.py), not by this interval: say so
            share = self.method.split("tail-exceedance test (", 1)[1].split(",", 1)[0]
            reading = f"the tail-exceedance test decides: {share}"
        return f"{name} {direction} {size}{interval}{rel}{how}, {reading}: {self.verdict}".replace("  ", " ")


@dataclass
class Comparison:
    """Per-metric results, indexable by metric name (``res["p99"].verdict``)."""

    results: dict[str, MetricResult]
    paired: bool
    window_s: float
    alpha: float
    windows: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)

    def __getitem__(self, metric: str) -> MetricResult:
        return self.results[metric]

    def __iter__(self) -> Iterator[MetricResult]:
        return iter(self.results.values())

    @property
    def verdict(self) -> Verdict:
        """Overall: worse if any metric is worse, else inconclusive if any is, else better/equivalent."""
        verdicts = [r.verdict for r in self]
        for v in ("worse", "inconclusive", "better"):
            if v in verdicts:
                return v  # type: ignore[return-value]
        return "equivalent"

    def to_frame(self) -> pd.DataFrame:
        rows = []
        for r in self:
            rows.append(
                {
                    "metric": r.metric, "baseline": r.baseline, "candidate": r.candidate,
                    "estimate": r.estimate, "ci_low": r.ci.low, "ci_high": r.ci.high, "ratio": r.ratio,
                    "margin": r.margin, "pvalue": r.pvalue, "pvalue_adjusted": r.pvalue_adjusted,
                    "confidence": r.confidence, "verdict": r.verdict, "n_windows": r.n_windows,
                    "method": r.method, "unit": r.unit, "explanation": r.explain(),
                }
            )  # fmt: skip
        return pd.DataFrame(rows).set_index("metric")


def compare(
    a: WindowInput,
    b: WindowInput,
    metrics: Sequence[str] = ("p50", "p90", "p99", "error_rate"),
    window: str | float = "5s",
    margin: Margin | None = None,
    alpha: float = 0.05,
    paired: bool | Literal["auto"] = "auto",
    no_data: NoData = "inconclusive",
) -> Comparison:
    """Compare candidate ``b`` against baseline ``a`` on ``metrics``; see the module docstring."""
    check_arguments(metrics, alpha)
    window_s = parse_duration(window)
    wa, wb = window_tables(a, b, window_s)
    return compare_tables(wa, wb, metrics, window_s, margin, alpha, paired, no_data)


def check_arguments(metrics: Sequence[str], alpha: float) -> None:
    """ValueError naming what is wrong with ``metrics`` or ``alpha``."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(METRICS)}")
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha must be between 0 and 0.5 (got {alpha})")


def window_tables(
    a: WindowInput, b: WindowInput, window_s: float, exceed: Margin | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both arms' window tables, aligned to one origin (the earlier arm's first timestamp).

    ``exceed``: also count, per window and tail metric, the candidate's requests above the
    baseline's quantile + this margin (``exceedance.py``; columns added to b's table) — when both
    arms come as per-request samples; a canary's anytime looks use them to roll back sooner."""
    starts = [t for t in (start_of(a), start_of(b)) if t is not None]
    origin = min(starts) if starts else pd.Timestamp(0, tz="UTC")
    wa, wb = window_table(a, window_s, origin), window_table(b, window_s, origin)
    sa, sb = as_samples(a), as_samples(b)
    if exceed is not None and sa is not None and sb is not None and len(wb):
        extra = exceedance.table_columns(
            sa, sb, window_s, origin, wb.index, exceed.latency_ms, exceed.latency_pct
        )
        wb = pd.concat([wb, extra], axis=1)
    return wa, wb


def compare_tables(
    wa: pd.DataFrame,
    wb: pd.DataFrame,
    metrics: Sequence[str] = ("p50", "p90", "p99", "error_rate"),
    window_s: float = 5.0,
    margin: Margin | None = None,
    alpha: float = 0.05,
    paired: bool | Literal["auto"] = "auto",
    no_data: NoData = "inconclusive",
) -> Comparison:
    """``compare`` on ready window tables (index: window number; columns count, errors and the
    metrics), for per-window values derived elsewhere, e.g. self-times from telemetry."""
    pair = Pair.of(wa, wb, metrics)
    return judge_pair(
        pair, metrics, window_s, margin, alpha, paired, no_data, FixedSample(), {"a": wa, "b": wb}
    )


def judge_pair(
    pair: Pair,
    metrics: Sequence[str],
    window_s: float,
    margin: Margin | None,
    alpha: float,
    paired: bool | Literal["auto"],
    no_data: NoData,
    rule: Rule,
    windows: dict[str, pd.DataFrame] | None = None,
    evidence: dict[str, Evidence] | None = None,
) -> Comparison:
    """The comparison of aligned windows (``estimates.Pair``) under ``rule``: fixed sample, or one
    look of a confidence sequence (``evidence``: further e-values of "worse" per metric, averaged
    with the confidence sequence's own; see ``decide``)."""
    margin = margin or Margin()
    is_paired = pair.concurrent if paired == "auto" else bool(paired)
    found = {
        m: est.error_rate(pair, is_paired) if m == "error_rate" else est.latency(m, pair, is_paired)
        for m in metrics
    }
    results = decide(found, margin, alpha, rule, no_data, evidence)
    return Comparison(results, is_paired, window_s, alpha, windows or {})


@dataclass(frozen=True)
class Evidence:
    """A second anytime-valid test of a metric's "worse": its log e-value and how to say it."""

    log_evalue: float
    note: str


def _pvalue(e: Estimate, margin: float, rule: Rule, extra: Evidence | None) -> float:
    """The metric's one-sided p-value of "worse than +margin". With ``extra`` (confidence sequences
    only): 1 / the average of the two e-values, (M + E) / 2 — an average of e-values is an e-value,
    so Ville's inequality still bounds the chance of ever passing 1 / level by level."""
    if extra is None or not isinstance(rule, Anytime) or not e.ok:
        return e.pvalue(margin, rule)
    log_mean = float(np.logaddexp(e.log_evalue(margin, rule), extra.log_evalue)) - math.log(2.0)
    return 1.0 if log_mean <= 0 else math.exp(-log_mean)


def decide(
    found: dict[str, Estimate],
    margin: Margin,
    alpha: float,
    rule: Rule,
    no_data: NoData,
    evidence: dict[str, Evidence] | None = None,
) -> dict[str, MetricResult]:
    """Holm's step-down on the one-sided tests of "worse than +margin", then each metric's interval
    at the level it was decided at and its verdict (see the module docstring)."""
    evidence = evidence or {}
    margins = {m: margin.of(m, e.baseline) for m, e in found.items()}
    tested = [m for m, e in found.items() if e.ok]
    p = {m: _pvalue(found[m], margins[m], rule, evidence.get(m)) for m in tested}
    rejected, levels = holm_levels([p[m] for m in tested], alpha) if tested else ([], [])
    adjusted = holm([p[m] for m in tested]) if tested else []
    out: dict[str, MetricResult] = {}
    for m, e in found.items():
        if not e.ok:
            fallback = margin.error_rate_pct if m == "error_rate" else margin.latency_ms
            out[m] = MetricResult(m, e.estimate, ConfidenceInterval.none(), float("nan"),
                                  NO_DATA_VERDICT[no_data], e.method, e.n_windows, e.baseline, e.candidate,
                                  fallback, float("nan"), unit=e.unit, note=e.note)  # fmt: skip
            continue
        i = tested.index(m)
        level = float(levels[i])
        ci = e.interval(level, rule)
        verdict: Verdict = "worse" if rejected[i] else _verdict(ci, margins[m])
        how = f"{e.method}; {rule.name}, Holm step-down decided at one-sided {level:.3g}"
        if e.floor_decides(level, rule):
            how += "; the per-request score interval decides (few errors)"
        if m in evidence and isinstance(rule, Anytime):
            how += f"; averaged with {evidence[m].note}"
        out[m] = MetricResult(m, e.estimate, ci, p[m], verdict, how, e.n_windows, e.baseline, e.candidate,
                              margins[m], 1 - 2 * level, float(adjusted[i]), e.unit)  # fmt: skip
    return out


def interval_verdict(ci: ConfidenceInterval, margin: float) -> Verdict:
    """The one rule of an interval against a practical margin: ``worse`` when it lies wholly beyond
    +margin, ``better`` beyond -margin, ``equivalent`` inside +-margin, else ``inconclusive``. Used
    where an interval alone decides (trials as replicates, runs against runs)."""
    lo, hi = ci
    if lo > margin:
        return "worse"
    if hi < -margin:
        return "better"
    if -margin < lo and hi < margin:
        return "equivalent"
    return "inconclusive"


def _verdict(ci: ConfidenceInterval, margin: float) -> Verdict:
    """better / equivalent / inconclusive from the interval (worse is Holm's decision)."""
    verdict = interval_verdict(ci, margin)
    return "inconclusive" if verdict == "worse" else verdict
