"""Trials as replicates: intervals from between-trial variation, for arms that cannot run at once.

Sidecar modes (or meshes) cannot serve the same requests at the same time, so a comparison runs
them as interleaved repeated trials (A B, B A, A B ...), each on a fresh mesh. What differs
between two runs of the same comparison is mostly *run-to-run* variation: a fresh mesh's
placement on the cores, the machine's background, warm caches. Windows cut from one trial share
all of that, so pooling windows from every trial and treating them as replicates gives an
interval that hardly contains run-to-run variation at all (three fresh runs whose intervals
exclude each other's estimates). Here the trial is the unit (windows stay nested inside it):

1. Each trial gives one estimate per arm (its p50 over all its requests, say).
2. Trials of the two arms that ran back to back (trial i of A and trial i of B) are paired, so
   slow drift of the machine cancels: the difference d_i = b_i - a_i per trial.
3. The estimate is mean(d) and its interval Student's t with n_trials - 1 degrees of freedom;
   with unequal trial counts (a trial lost), Welch's t over the per-trial estimates instead.
4. The verdict is read against the practical margin as everywhere in ``workbench.stats``:
   ``worse`` when the whole interval lies beyond +margin, ``better`` beyond -margin,
   ``equivalent`` inside +-margin, else ``inconclusive``. One trial per arm has no between-trial
   variation to estimate: the verdict is ``no interval`` and the note says "no interval (one
   trial per mode)" -- never an interval that pretends.

Per-trial values are the caller's choice of estimate. ``per_trial`` gives the usual one from raw
samples: each metric's mean over the trial's windows (a window counts for a quantile when it has
``MIN_PER_WINDOW`` requests, so a p99 needs 100), the windows only making a trial's estimate
steady; ``trial_window`` picks those windows' width.

``one_sample`` is the same idea for a single arm (e.g. the proxy's own time per traversal, one
p50 per trial): mean over trials with a t interval.

Results are objects in the scipy.stats manner: ``estimate``, ``ci`` (a ``ConfidenceInterval``),
``pvalue``, ``df``, ``verdict`` and ``confidence_interval(level)`` for another level.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats as sps

from workbench.stats.compare import interval_verdict
from workbench.stats.estimates import MIN_PER_WINDOW
from workbench.stats.interval import ConfidenceInterval
from workbench.stats.windows import WindowInput, start_of, window_table

__all__ = ["NO_INTERVAL", "TrialResult", "one_sample", "paired_trials", "per_trial", "trial_window"]

PerTrial = Sequence[float] | Mapping[int, float]

NO_INTERVAL = "no interval"
ONE_TRIAL_NOTE = "no interval (one trial per mode)"


@dataclass(frozen=True)
class TrialResult:
    """A difference (or a level) estimated from per-trial values, with its t interval."""

    estimate: float
    ci: ConfidenceInterval
    pvalue: float  # two-sided, H0: no difference (one_sample: H0: mean 0)
    df: float
    verdict: str  # worse | better | equivalent | inconclusive | no interval
    method: str
    n_trials: int
    baseline: float  # mean of the baseline's per-trial values (NaN for one_sample)
    candidate: float  # mean of the candidate's per-trial values (one_sample: the mean)
    margin: float
    confidence: float
    per_trial: tuple[float, ...] = field(default=())  # the per-trial differences (or values)
    se: float = math.nan
    note: str = ""

    def confidence_interval(self, confidence_level: float | None = None) -> ConfidenceInterval:
        """The interval at ``confidence_level`` (default: the level it was computed at)."""
        level = self.confidence if confidence_level is None else confidence_level
        if not (math.isfinite(self.se) and self.df > 0):
            return ConfidenceInterval.none()
        if self.se == 0:
            return ConfidenceInterval(self.estimate, self.estimate)
        t = float(sps.t.ppf(0.5 + level / 2, self.df))
        return ConfidenceInterval(self.estimate - t * self.se, self.estimate + t * self.se)

    def explain(self, unit: str = "ms", what: str = "") -> str:
        """One sentence: the estimate, its interval over trials, and the verdict."""
        name = f"{what} " if what else ""
        if not self.ci.finite:
            return f"{name}{self.estimate:+.3g} {unit}: {self.note or NO_INTERVAL}"
        lo, hi = self.ci
        return (f"{name}{self.estimate:+.3g} {unit} [{lo:+.3g}, {hi:+.3g}] over {self.n_trials} trials "
                f"(margin ±{self.margin:.3g} {unit}): {self.verdict}")  # fmt: skip


def _verdict(ci: ConfidenceInterval, margin: float) -> str:
    return interval_verdict(ci, margin) if ci.finite else NO_INTERVAL


def _values(x: Sequence[float]) -> np.ndarray:
    arr = np.asarray(list(x), dtype=float)
    return arr[np.isfinite(arr)]


def _result(
    est: float, se: float, df: float, n: int, confidence: float, margin: float, method: str,
    base: float, cand: float, per_trial: np.ndarray, note: str = "",
) -> TrialResult:  # fmt: skip
    if n < 2 or not math.isfinite(se):
        return TrialResult(est, ConfidenceInterval.none(), math.nan, 0.0, NO_INTERVAL, method, n, base, cand,
                           margin, confidence, tuple(per_trial), math.nan,
                           note or ONE_TRIAL_NOTE)  # fmt: skip
    if se == 0:
        ci, p = ConfidenceInterval(est, est), (0.0 if est else 1.0)
    else:
        t = float(sps.t.ppf(0.5 + confidence / 2, df))
        ci = ConfidenceInterval(est - t * se, est + t * se)
        p = float(2 * sps.t.sf(abs(est) / se, df))
    return TrialResult(est, ci, p, df, _verdict(ci, margin), method, n, base, cand, margin, confidence,
                       tuple(per_trial), se, note)  # fmt: skip


def paired_trials(
    baseline: PerTrial,
    candidate: PerTrial,
    *,
    margin: float = 0.0,
    confidence: float = 0.95,
    paired: bool | None = None,
) -> TrialResult:
    """Candidate minus baseline from one value per trial and arm; see the module docstring.

    ``baseline``/``candidate``: per-trial values, in trial order or keyed by trial number; a
    trial without a (finite) value is left out. ``paired`` None: paired t with n - 1 df over the
    per-trial differences when both arms have the same trials (``baseline[i]`` and
    ``candidate[i]`` ran back to back), else Welch over the per-trial values; False forces Welch.
    Fewer than two trials on either side: verdict ``no interval``.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1 (got {confidence})")
    ka, kb = _keyed(baseline), _keyed(candidate)
    if not ka or not kb:
        raise ValueError(f"need at least one trial per arm (got {len(ka)} baseline, {len(kb)} candidate)")
    a, b = np.array([ka[t] for t in sorted(ka)]), np.array([kb[t] for t in sorted(kb)])
    base, cand = float(a.mean()), float(b.mean())
    if (set(ka) == set(kb)) if paired is None else (paired and set(ka) == set(kb)):
        d = b - a
        n = len(d)
        se = float(d.std(ddof=1) / math.sqrt(n)) if n >= 2 else math.nan
        method = f"paired t over {n} interleaved trials ({n - 1} df)" if n >= 2 else "one trial per arm"
        return _result(float(d.mean()), se, n - 1, n, confidence, margin, method, base, cand, d)
    n = min(len(a), len(b))
    if n < 2:
        return _result(cand - base, math.nan, 0, n, confidence, margin, "one trial per arm", base, cand,
                       np.array([]))  # fmt: skip
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if va + vb > 0 else n - 1
    method = f"Welch t over per-trial values ({len(a)}+{len(b)} trials)"
    return _result(cand - base, se, float(df), n, confidence, margin, method, base, cand, np.array([]))


def _keyed(values: PerTrial) -> dict[int, float]:
    items = values.items() if isinstance(values, Mapping) else enumerate(values)
    return {int(t): float(v) for t, v in items if v is not None and math.isfinite(float(v))}


def one_sample(values: Sequence[float], *, confidence: float = 0.95, margin: float = 0.0) -> TrialResult:
    """The mean of one value per trial with a t interval over trials (n - 1 df)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1 (got {confidence})")
    x = _values(values)
    if not len(x):
        raise ValueError("need at least one trial")
    n = len(x)
    se = float(x.std(ddof=1) / math.sqrt(n)) if n >= 2 else math.nan
    method = f"mean over {n} trials, t interval ({n - 1} df)" if n >= 2 else "one trial"
    return _result(float(x.mean()), se, n - 1, n, confidence, margin, method, math.nan, float(x.mean()), x)


def trial_window(duration_s: float, rate: float, min_requests: int = MIN_PER_WINDOW["p99"]) -> float:
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
