"""Two-arm comparison: did b (candidate) change latency or errors against a (baseline)?

The method (../shared/DESIGN.md, "Statistics"):

1. Windows, not requests, are the unit (``windows.py``). When both arms ran at the same time,
   their windows are paired and the per-window differences are analysed; otherwise each arm's
   windows are compared (Welch).
2. Uncertainty by batch means over windows, with the variance inflated by the windows' lag-1
   autocorrelation, (1 + rho) / (1 - rho), so bursts that span windows do not shrink the interval;
   Student-t intervals with n - 1 degrees of freedom suit the small number of windows.
3. Effect with a confidence interval and a practical margin: ``worse`` when the whole interval
   lies beyond +margin, ``better`` beyond -margin, ``equivalent`` inside +-margin, else
   ``inconclusive``. Latency margin = max(latency_ms, latency_pct % of the baseline).
4. Error rates from counts: Newcombe's score interval for the difference, Fisher's exact test.
5. Several metrics: the intervals that decide are at level 1 - 2 alpha / k (each one-sided claim at
   alpha / k, Bonferroni), so the chance of any false ``worse`` stays <= alpha; p-values of "no
   difference" are reported raw and Holm-adjusted.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats as sps
from statsmodels.stats.proportion import confint_proportions_2indep

from workbench.stats.interval import ConfidenceInterval
from workbench.stats.multiple import holm
from workbench.stats.windows import QUANTILE_METRICS, WindowInput, start_of, window_table
from workbench.units import parse_duration

Verdict = Literal["worse", "better", "equivalent", "inconclusive"]
NoData = Literal["fail", "pass", "inconclusive"]
MIN_PER_WINDOW = {"p50": 5, "p75": 8, "p90": 20, "p95": 40, "p99": 100, "p999": 1000, "mean": 5}
MIN_WINDOWS = 3
NO_DATA_VERDICT: dict[str, Verdict] = {"fail": "worse", "pass": "equivalent", "inconclusive": "inconclusive"}


@dataclass(frozen=True)
class Margin:
    """Practical margins: latency beyond max(ms, pct of baseline), errors beyond points."""

    latency_ms: float = 1.0
    latency_pct: float = 5.0
    error_rate_pct: float = 0.5

    def latency(self, baseline_ms: float) -> float:
        base = abs(baseline_ms) if math.isfinite(baseline_ms) else 0.0
        return max(self.latency_ms, self.latency_pct / 100.0 * base)


@dataclass(frozen=True)
class MetricResult:
    """One metric's comparison, in the manner of scipy.stats results."""

    metric: str
    estimate: float  # b - a, ms (latency) or percentage points (error_rate)
    ci: ConfidenceInterval
    pvalue: float  # two-sided, H0: no difference
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
        return f"{name} {direction} {size}{interval}{rel}, {reading}: {self.verdict}".replace("  ", " ")


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
                    "verdict": r.verdict, "n_windows": r.n_windows, "method": r.method, "unit": r.unit,
                    "explanation": r.explain(),
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
    unknown = [m for m in metrics if m not in (*QUANTILE_METRICS, "mean", "error_rate")]
    if unknown:
        raise ValueError(
            f"unknown metrics {unknown}; choose from {[*QUANTILE_METRICS, 'mean', 'error_rate']}"
        )
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha must be between 0 and 0.5 (got {alpha})")
    window_s = parse_duration(window)
    starts = [t for t in (start_of(a), start_of(b)) if t is not None]
    origin = min(starts) if starts else pd.Timestamp(0, tz="UTC")
    wa, wb = window_table(a, window_s, origin), window_table(b, window_s, origin)
    return compare_tables(wa, wb, metrics, window_s, margin, alpha, paired, no_data)


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
    margin = margin or Margin()
    common = wa.index.intersection(wb.index)
    concurrent = len(common) >= MIN_WINDOWS and len(common) >= 0.5 * min(len(wa), len(wb))
    is_paired = concurrent if paired == "auto" else bool(paired)
    k = len(metrics)
    level = 1 - 2 * alpha / k  # each one-sided claim at alpha / k
    results: dict[str, MetricResult] = {}
    for metric in metrics:
        if metric == "error_rate":
            results[metric] = _error_rate(wa, wb, margin, level, no_data)
        else:
            results[metric] = _latency(metric, wa, wb, common, is_paired, margin, level, no_data)
    pvals = [r.pvalue for r in results.values()]
    finite = [i for i, p in enumerate(pvals) if math.isfinite(p)]
    adjusted = dict(zip(finite, holm([pvals[i] for i in finite]), strict=True)) if finite else {}
    final = {
        m: replace(r, pvalue_adjusted=float(adjusted[i])) if i in adjusted else r
        for i, (m, r) in enumerate(results.items())
    }
    return Comparison(final, is_paired, window_s, alpha, {"a": wa, "b": wb})


def _latency(
    metric: str,
    wa: pd.DataFrame,
    wb: pd.DataFrame,
    common: pd.Index,
    paired: bool,
    margin: Margin,
    level: float,
    no_data: NoData,
) -> MetricResult:
    need = MIN_PER_WINDOW.get(metric, 5)
    ok_a = wa.index[wa["count"] >= need] if len(wa) else wa.index
    ok_b = wb.index[wb["count"] >= need] if len(wb) else wb.index
    if paired:
        idx = common.intersection(ok_a).intersection(ok_b)
        xa, xb = wa.loc[idx, metric].to_numpy(float), wb.loc[idx, metric].to_numpy(float)
    else:
        xa, xb = wa.loc[ok_a, metric].to_numpy(float), wb.loc[ok_b, metric].to_numpy(float)
    n = min(len(xa), len(xb))
    if n < MIN_WINDOWS:
        note = (f"too few windows with >= {need} requests each ({len(xa)} baseline, {len(xb)} candidate; "
                f"need {MIN_WINDOWS})")  # fmt: skip
        return MetricResult(metric, float("nan"), ConfidenceInterval.none(), float("nan"),
                            NO_DATA_VERDICT[no_data], "no data", n, float("nan"), float("nan"),
                            margin.latency_ms, level, note=note)  # fmt: skip
    base, cand = float(np.mean(xa)), float(np.mean(xb))
    if paired:
        d = xb - xa
        est, se, df = float(d.mean()), _se_batch_means(d), len(d) - 1
        method = f"paired windows, batch means (t, AR(1)-inflated), {len(d)} windows"
    else:
        va, vb = _se_batch_means(xa) ** 2, _se_batch_means(xb) ** 2
        est, se = cand - base, math.sqrt(va + vb)
        df = (va + vb) ** 2 / ((va**2 / (len(xa) - 1)) + (vb**2 / (len(xb) - 1))) if va + vb > 0 else n - 1
        method = f"unpaired windows, Welch t (AR(1)-inflated), {len(xa)}+{len(xb)} windows"
    m = margin.latency(base)
    if se == 0:
        ci = ConfidenceInterval(est, est)
        p = 0.0 if est else 1.0
    else:
        t = sps.t.ppf(0.5 + level / 2, df)
        ci = ConfidenceInterval(est - t * se, est + t * se)
        p = float(2 * sps.t.sf(abs(est) / se, df))
    return MetricResult(metric, est, ci, p, _verdict(ci, m), method, n, base, cand, m, level)


def _se_batch_means(x: np.ndarray) -> float:
    """Standard error of the mean of window values, inflated for lag-1 autocorrelation."""
    n = len(x)
    if n < 2:
        return float("nan")
    sd = float(np.std(x, ddof=1))
    if sd == 0:
        return 0.0
    rho = float(np.corrcoef(x[:-1], x[1:])[0, 1]) if n >= 4 else 0.0
    rho = min(max(rho if math.isfinite(rho) else 0.0, 0.0), 0.9)
    return sd / math.sqrt(n) * math.sqrt((1 + rho) / (1 - rho))


def _error_rate(
    wa: pd.DataFrame, wb: pd.DataFrame, margin: Margin, level: float, no_data: NoData
) -> MetricResult:
    na, nb = int(wa["count"].sum()) if len(wa) else 0, int(wb["count"].sum()) if len(wb) else 0
    ea, eb = int(wa["errors"].sum()) if len(wa) else 0, int(wb["errors"].sum()) if len(wb) else 0
    m = margin.error_rate_pct
    n_windows = min(len(wa), len(wb))
    if na == 0 or nb == 0:
        note = f"no traffic in the {'baseline' if na == 0 else 'candidate'} arm"
        return MetricResult("error_rate", float("nan"), ConfidenceInterval.none(), float("nan"),
                            NO_DATA_VERDICT[no_data], "no data", n_windows, float("nan"), float("nan"),
                            m, level, unit="pts", note=note)  # fmt: skip
    lo, hi = confint_proportions_2indep(eb, nb, ea, na, method="newcomb", compare="diff", alpha=1 - level)
    p = float(sps.fisher_exact([[eb, nb - eb], [ea, na - ea]]).pvalue)
    ci = ConfidenceInterval(100 * float(lo), 100 * float(hi))
    base, cand = 100 * ea / na, 100 * eb / nb
    method = f"Newcombe score interval, Fisher exact test, {na}+{nb} requests"
    return MetricResult("error_rate", cand - base, ci, p, _verdict(ci, m), method, n_windows, base, cand, m,
                        level, unit="pts")  # fmt: skip


def _verdict(ci: ConfidenceInterval, margin: float) -> Verdict:
    lo, hi = ci
    if lo > margin:
        return "worse"
    if hi < -margin:
        return "better"
    if -margin < lo and hi < margin:
        return "equivalent"
    return "inconclusive"
