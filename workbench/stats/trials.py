"""Trials as replicates: per-trial estimates, a t interval over trials, a verdict against the margin.

When two arms cannot run at the same time (two meshes, two sidecar modes), the experiment runs
them in interleaved trials (A B, B A, ...). Run-to-run variation — a different node, a cold cache,
a noisy neighbour — is then the largest source of error, and it shows only *between* trials: the
windows of one trial share it. Pooling every window of every trial as if independent hides it and
gives intervals far too narrow (../shared/DESIGN.md, "Statistics", 1). So windows are nested in
trials:

1. each trial of each arm gives **one estimate** per metric: the mean of its windows' values (p50,
   p90, p99 ... of each window with enough requests for that quantile, ``MIN_PER_WINDOW``) —
   the windows only make a trial's estimate steady;
2. the difference candidate − baseline gets a **Student-t interval over trials** (n − 1 degrees of
   freedom): paired by trial when both arms ran in every trial (the pair ran close in time, so the
   per-trial difference cancels what they shared), Welch's otherwise;
3. the **verdict** against the practical margin is ``compare``'s: ``worse``/``better`` when the
   whole interval lies beyond ±margin, ``equivalent`` inside it, else ``inconclusive``.

With ``k`` metrics judged together each one-sided claim is made at alpha / k, as in ``compare``.
Two trials give an interval with 1 degree of freedom — honest, and wide: more trials narrow it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from workbench.stats.compare import MIN_PER_WINDOW, Margin, Verdict, _verdict
from workbench.stats.interval import ConfidenceInterval
from workbench.stats.windows import WindowInput, start_of, window_table

__all__ = ["TrialComparison", "compare_trials", "per_trial", "trial_window"]

MIN_P99_REQUESTS = MIN_PER_WINDOW["p99"]


@dataclass(frozen=True)
class TrialComparison:
    """One metric compared over trials, in the manner of scipy.stats results."""

    metric: str
    estimate: float  # mean candidate − baseline over trials (ms)
    ci: ConfidenceInterval
    pvalue: float  # two-sided, H0: no difference
    verdict: Verdict
    method: str
    n_trials: int
    baseline: float  # mean of the baseline's per-trial estimates
    candidate: float
    margin: float
    confidence: float
    differences: tuple[float, ...] = ()  # per trial, when paired
    note: str = ""

    def explain(self) -> str:
        """One sentence: the change, its interval over trials, the margin and the verdict."""
        if self.note:
            return f"{self.metric}: {self.note}: {self.verdict}"
        lo, hi = self.ci
        direction = "rose" if self.estimate > 0 else "fell" if self.estimate < 0 else "did not change"
        size = f" {abs(self.estimate):.3g} ms" if self.estimate else ""
        reading = {
            "worse": f"beyond the {self.margin:.3g} ms margin",
            "better": f"beyond the {self.margin:.3g} ms margin, for the better",
            "equivalent": f"inside the ±{self.margin:.3g} ms margin",
            "inconclusive": f"the interval reaches across the ±{self.margin:.3g} ms margin; more trials "
            "would decide",
        }[self.verdict]
        return (
            f"{self.metric} {direction}{size} [{lo:+.3g}, {hi:+.3g}] ({self.baseline:.3g} → "
            f"{self.candidate:.3g} ms, {self.n_trials} trials), {reading}: {self.verdict}"
        )


def trial_window(duration_s: float, rate: float, min_requests: int = MIN_P99_REQUESTS) -> float:
    """Equal windows per trial: ~duration/5, >= 1 s, long enough for ``min_requests`` at ``rate`` (a
    p99 needs 100), at least 2 per trial — many enough to steady a trial's estimate, big enough for
    its quantiles."""
    target = max(1.0, duration_s / 5, min_requests / rate if rate > 0 else 0.0)
    return duration_s / max(2, math.floor(duration_s / target))


def per_trial(trials: Mapping[int, WindowInput], metrics: Sequence[str], window_s: float) -> pd.DataFrame:
    """One row per trial: each metric's mean over the trial's windows (windows aligned to the
    trial's own start; a window counts for a quantile when it has ``MIN_PER_WINDOW`` requests),
    plus ``requests`` and ``windows``. A trial without such windows has NaN for that metric."""
    rows = []
    for trial, data in sorted(trials.items()):
        origin = start_of(data)
        table = window_table(data, window_s, origin) if origin is not None else pd.DataFrame()
        requests = float(table["count"].sum()) if len(table) else 0.0
        row: dict[str, float] = {"trial": trial, "requests": requests, "windows": float(len(table))}
        for metric in metrics:
            need = MIN_PER_WINDOW.get(metric, 5)
            usable = table[table["count"] >= need][metric] if len(table) else pd.Series(dtype=float)
            row[metric] = float(usable.mean()) if len(usable) else math.nan
        rows.append(row)
    return pd.DataFrame(rows, columns=["trial", "requests", "windows", *metrics]).set_index("trial")


def compare_trials(
    baseline: Mapping[int, float] | Sequence[float],
    candidate: Mapping[int, float] | Sequence[float],
    metric: str = "p50",
    margin: Margin | None = None,
    alpha: float = 0.05,
    k: int = 1,
    paired: bool | None = None,
) -> TrialComparison:
    """Candidate − baseline over trials (see the module docstring).

    ``baseline``/``candidate``: per-trial estimates, keyed by trial number (or in trial order).
    ``paired``: None pairs by trial when both arms have the same trials; False forces Welch's.
    ``k``: how many metrics are judged together (each one-sided claim at alpha / k).
    """
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha must be between 0 and 0.5 (got {alpha})")
    margin = margin or Margin()
    a, b = _finite(baseline), _finite(candidate)
    level = 1 - 2 * alpha / max(1, k)
    common = sorted(set(a) & set(b))
    is_paired = (set(a) == set(b)) if paired is None else bool(paired and len(common) >= 2)
    xa, xb = np.array([a[t] for t in sorted(a)]), np.array([b[t] for t in sorted(b)])
    base = float(xa.mean()) if len(xa) else math.nan
    cand = float(xb.mean()) if len(xb) else math.nan
    m = margin.latency(base)
    if min(len(xa), len(xb)) < 2 or (is_paired and len(common) < 2):
        note = f"needs >= 2 trials with data in each arm (baseline {len(xa)}, candidate {len(xb)})"
        return TrialComparison(metric, math.nan, ConfidenceInterval.none(), math.nan, "inconclusive",
                               "no data", min(len(xa), len(xb)), base, cand, m, level, note=note)  # fmt: skip
    if is_paired:
        d = np.array([b[t] - a[t] for t in common])
        est, se, df = float(d.mean()), float(d.std(ddof=1)) / math.sqrt(len(d)), len(d) - 1
        method = f"trials as replicates, paired by trial: t interval over {len(d)} trials"
        n, diffs = len(d), tuple(float(x) for x in d)
    else:
        va, vb = float(xa.var(ddof=1)) / len(xa), float(xb.var(ddof=1)) / len(xb)
        est, se = cand - base, math.sqrt(va + vb)
        df = (va + vb) ** 2 / (va**2 / (len(xa) - 1) + vb**2 / (len(xb) - 1)) if va + vb > 0 else 1.0
        method = f"trials as replicates, Welch t over {len(xa)}+{len(xb)} trials"
        n, diffs = min(len(xa), len(xb)), ()
    if se == 0:
        ci, p = ConfidenceInterval(est, est), (0.0 if est else 1.0)
    else:
        t = float(sps.t.ppf(0.5 + level / 2, df))
        ci = ConfidenceInterval(est - t * se, est + t * se)
        p = float(2 * sps.t.sf(abs(est) / se, df))
    return TrialComparison(metric, est, ci, p, _verdict(ci, m), method, n, base, cand, m, level, diffs)


def _finite(values: Mapping[int, float] | Sequence[float]) -> dict[int, float]:
    items = values.items() if isinstance(values, Mapping) else enumerate(values)
    return {int(t): float(v) for t, v in items if v is not None and math.isfinite(float(v))}
