"""One metric's difference between two arms, with its uncertainty, from per-window tables.

Windows, not requests, are the unit (``windows.py``), for latency and error rates alike:

- **Latency** (a quantile or the mean): each window's value per arm. When the arms ran at the same
  time their windows are paired and the per-window differences are averaged; otherwise each arm's
  windows are averaged and the two means compared (Welch). Standard errors are batch means over
  windows, inflated for lag-1 autocorrelation by sqrt((1 + rho) / (1 - rho)) so that slow bursts
  spanning windows do not shrink them; degrees of freedom n - 1 (Welch-Satterthwaite unpaired).
- **Error rate**: errors come in bursts (a replica restarting, a pool reset), often in one arm
  only, so requests are not independent and a per-request test (Fisher, Newcombe on pooled counts)
  cries wolf. The rate of each arm is a ratio estimator, sum(errors) / sum(requests), and its
  variance is window-clustered: each window contributes its linearised residual
  (errors_w - rate * requests_w) / mean requests per window; paired across arms when concurrent
  (the residual of b minus that of a, so bursts both arms share cancel), with the same
  autocorrelation inflation and t degrees of freedom as latency. Where errors are too rare for the
  windows to say anything (say no errors at all in a handful of windows, a variance of zero) the
  clustered interval would be absurdly narrow, so the interval used is the wider of the clustered
  one and Newcombe's per-request score interval (the hybrid Wilson score interval for a difference
  of proportions; Newcombe 1998, method 10) at the same level: never narrower than what
  independent requests would give. Its tests are the union: a claim needs both.

An ``Estimate`` turns into one-sided p-values against any null value and into one-sided bounds at
any level under a ``boundaries`` rule (fixed sample, or a confidence sequence for any number of
looks); ``compare.py`` decides with them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from workbench.stats.boundaries import Anytime, Rule
from workbench.stats.interval import ConfidenceInterval

MIN_PER_WINDOW = {"p50": 5, "p75": 8, "p90": 20, "p95": 40, "p99": 100, "p999": 1000, "mean": 5}
MIN_WINDOWS = 3
MAX_RHO = 0.9  # lag-1 autocorrelation used for inflation is clipped to [0, MAX_RHO]


@dataclass(frozen=True)
class Counts:
    """Pooled errors and requests of both arms: the per-request score interval's data."""

    errors_a: float
    requests_a: float
    errors_b: float
    requests_b: float

    def bounds(self, z: float) -> tuple[float, float]:
        """Newcombe's hybrid score interval for rate_b - rate_a with critical value ``z`` (each end)."""
        pa, pb = self.errors_a / self.requests_a, self.errors_b / self.requests_b
        la, ua = _wilson(self.errors_a, self.requests_a, z)
        lb, ub = _wilson(self.errors_b, self.requests_b, z)
        d = pb - pa
        return d - math.hypot(pb - lb, ua - pa), d + math.hypot(ub - pb, pa - la)

    def z_for(self, value: float) -> float:
        """The critical value at which the interval's lower end reaches ``value``: the score
        statistic of H0 "difference <= value" (0: no evidence against it)."""
        if self.errors_b / self.requests_b - self.errors_a / self.requests_a <= value:
            return 0.0
        lo, hi = 0.0, 64.0
        if self.bounds(hi)[0] > value:
            return math.inf
        for _ in range(60):  # bisection: the lower end falls as z grows
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if self.bounds(mid)[0] > value else (lo, mid)
        return 0.5 * (lo + hi)


def _wilson(k: float, n: float, z: float) -> tuple[float, float]:
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2.0 * n)) / denom
    half = z / denom * math.sqrt(max(p * (1.0 - p) / n + z * z / (4.0 * n * n), 0.0))
    return max(centre - half, 0.0), min(centre + half, 1.0)


@dataclass(frozen=True)
class Estimate:
    """b - a for one metric: estimate, standard error, degrees of freedom, and how it was made.

    ``floor`` (error rates): pooled counts whose per-request score interval the interval never
    undercuts. ``note`` non-empty: no estimate could be made (too few windows, no traffic)."""

    metric: str
    estimate: float
    se: float
    df: float
    baseline: float
    candidate: float
    n_windows: int
    method: str
    unit: str = "ms"
    floor: Counts | None = None
    note: str = ""
    scale: float = 1.0  # the floor works in rates; estimates in ms or percentage points

    @property
    def ok(self) -> bool:
        return not self.note

    def pvalue(self, value: float, rule: Rule) -> float:
        """One-sided p-value of H0 "difference <= value" (the test of "worse than value")."""
        if self.se > 0:
            p = rule.pvalue((self.estimate - value) / self.se, self.df, self.n_windows)
        else:
            p = 0.0 if self.estimate > value else 1.0
        if self.floor is not None:
            z = self.floor.z_for(value / self.scale)
            p = max(p, rule.pvalue(z, math.inf, self.n_windows) if z > 0 else 1.0)
        return float(p)

    def log_evalue(self, value: float, rule: Anytime) -> float:
        """log of the confidence sequence's e-value against H0 "difference <= value" (``pvalue``'s
        1 / p, uncapped; with a floor, the smaller of the windows' and the per-request score's)."""
        if self.se > 0:
            log_e = rule.log_value((self.estimate - value) / self.se, self.df, self.n_windows)
        else:
            log_e = math.inf if self.estimate > value else -math.inf
        if self.floor is not None:
            log_e = min(log_e, rule.log_value(self.floor.z_for(value / self.scale), math.inf, self.n_windows))
        return log_e

    def interval(self, level: float, rule: Rule) -> ConfidenceInterval:
        """Each end a one-sided bound at ``level`` (together: two-sided 1 - 2 level)."""
        half = rule.critical(level, self.df, self.n_windows) * self.se if self.se > 0 else 0.0
        lo, hi = self.estimate - half, self.estimate + half
        if self.floor is not None:
            flo, fhi = self.floor.bounds(rule.critical(level, math.inf, self.n_windows))
            lo, hi = min(lo, self.scale * flo), max(hi, self.scale * fhi)
        return ConfidenceInterval(float(lo), float(hi))

    def floor_decides(self, level: float, rule: Rule) -> bool:
        """Whether the per-request score interval is the wider one (errors too rare for the windows)."""
        if self.floor is None:
            return False
        half = rule.critical(level, self.df, self.n_windows) * self.se if self.se > 0 else 0.0
        flo, fhi = self.floor.bounds(rule.critical(level, math.inf, self.n_windows))
        return self.scale * (fhi - flo) > 2 * half


def no_estimate(
    metric: str, note: str, n_windows: int, unit: str = "ms", levels: tuple[float, float] | None = None
) -> Estimate:
    """No difference could be estimated (``note`` says why); ``levels``: each arm's own level, when
    known, is still reported."""
    nan = float("nan")
    base, cand = levels or (nan, nan)
    return Estimate(metric, nan, nan, nan, base, cand, n_windows, "no data", unit, note=note)


def se_batch_means(x: np.ndarray) -> float:
    """Standard error of the mean of window values, inflated for lag-1 autocorrelation."""
    n = len(x)
    if n < 2:
        return float("nan")
    sd = float(np.std(x, ddof=1))
    if sd == 0:
        return 0.0
    return sd / math.sqrt(n) * math.sqrt(_inflation(x))


def _inflation(x: np.ndarray) -> float:
    """(1 + rho) / (1 - rho) for the lag-1 autocorrelation rho of ``x``, clipped to [0, MAX_RHO]."""
    if len(x) < 4:
        return 1.0
    a, b = x[:-1] - x[:-1].mean(), x[1:] - x[1:].mean()
    denom = math.sqrt(float(a @ a) * float(b @ b))
    rho = float(a @ b) / denom if denom > 0 else 0.0
    rho = min(max(rho if math.isfinite(rho) else 0.0, 0.0), MAX_RHO)
    return (1 + rho) / (1 - rho)


@dataclass(frozen=True)
class Pair:
    """Both arms' window tables aligned on the union of their window numbers, as numpy arrays (a
    window an arm lacks has count 0): cheap to cut to the first k windows for a look."""

    window: np.ndarray
    a: dict[str, np.ndarray]
    b: dict[str, np.ndarray]

    @classmethod
    def of(cls, wa: pd.DataFrame, wb: pd.DataFrame, metrics: Sequence[str]) -> Pair:
        """The windows of ``wa`` and ``wb`` with the columns ``metrics`` need."""
        union = wa.index.union(wb.index)
        cols = list(dict.fromkeys(["count", "errors", *(m for m in metrics if m != "error_rate")]))

        def aligned(t: pd.DataFrame) -> dict[str, np.ndarray]:
            t = t.reindex(index=union, columns=cols)
            out = {c: t[c].to_numpy(dtype=float) for c in cols}
            out["count"] = np.nan_to_num(out["count"])
            out["errors"] = np.nan_to_num(out["errors"])
            return out

        b = aligned(wb)
        for c in wb.columns:  # the exceedance counts the candidate's table may carry (exceedance.py)
            if str(c).startswith("exceed_"):
                b[str(c)] = np.nan_to_num(wb[c].reindex(union).to_numpy(dtype=float))
        return cls(union.to_numpy(), aligned(wa), b)

    def upto(self, k: int) -> Pair:
        """The first ``k`` windows."""
        return Pair(
            self.window[:k], {c: v[:k] for c, v in self.a.items()}, {c: v[:k] for c, v in self.b.items()}
        )

    @property
    def concurrent(self) -> bool:
        """Whether the arms ran at the same time: enough windows in common to pair them."""
        has_a, has_b = self.a["count"] > 0, self.b["count"] > 0
        common = int((has_a & has_b).sum())
        return common >= MIN_WINDOWS and common >= 0.5 * min(int(has_a.sum()), int(has_b.sum()))


def latency(metric: str, pair: Pair, paired: bool) -> Estimate:
    """Difference in ``metric`` (ms) from per-window values; windows with too few requests are left out."""
    need = MIN_PER_WINDOW.get(metric, 5)
    ok_a, ok_b = pair.a["count"] >= need, pair.b["count"] >= need
    if paired:
        both = ok_a & ok_b
        xa, xb = pair.a[metric][both], pair.b[metric][both]
    else:
        xa, xb = pair.a[metric][ok_a], pair.b[metric][ok_b]
    n = min(len(xa), len(xb))
    if n < MIN_WINDOWS:
        return no_estimate(metric, (f"too few windows with >= {need} requests each ({len(xa)} baseline, "
                                    f"{len(xb)} candidate; need {MIN_WINDOWS})"), n)  # fmt: skip
    base, cand = float(np.mean(xa)), float(np.mean(xb))
    if paired:
        d = xb - xa
        est, se, df = float(d.mean()), se_batch_means(d), float(len(d) - 1)
        method = f"paired windows, batch means (t, AR(1)-inflated), {len(d)} windows"
    else:
        va, vb = se_batch_means(xa) ** 2, se_batch_means(xb) ** 2
        est, se = cand - base, math.sqrt(va + vb)
        df = _welch_df(va, vb, len(xa), len(xb))
        method = f"unpaired windows, Welch t (AR(1)-inflated), {len(xa)}+{len(xb)} windows"
    return Estimate(metric, est, se, df, base, cand, n, method)


def _welch_df(va: float, vb: float, na: int, nb: int) -> float:
    if va + vb <= 0:
        return float(min(na, nb) - 1)
    return (va + vb) ** 2 / ((va**2 / (na - 1)) + (vb**2 / (nb - 1)))


def _residuals(n: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-window linearised residuals of an arm's error rate (ratio estimator), and the rate."""
    rate = float(e.sum() / n.sum())
    return (e - rate * n) / n.mean(), rate


def error_rate(pair: Pair, paired: bool) -> Estimate:
    """Difference in error rate (percentage points): window-clustered, never narrower than per request."""
    (na_w, ea_w), (nb_w, eb_w) = (pair.a["count"], pair.a["errors"]), (pair.b["count"], pair.b["errors"])
    na, nb = float(na_w.sum()), float(nb_w.sum())
    if not paired:  # each arm's own windows
        has_a, has_b = na_w > 0, nb_w > 0
        (na_w, ea_w), (nb_w, eb_w) = (na_w[has_a], ea_w[has_a]), (nb_w[has_b], eb_w[has_b])
    n_windows = min(len(na_w), len(nb_w))
    if na == 0 or nb == 0:
        return no_estimate("error_rate", f"no traffic in the {'baseline' if na == 0 else 'candidate'} arm",
                           n_windows, "pts")  # fmt: skip
    if n_windows < MIN_WINDOWS:
        levels = (100 * float(ea_w.sum()) / na, 100 * float(eb_w.sum()) / nb)  # the rates are known
        return no_estimate(
            "error_rate", f"too few windows ({n_windows}; need {MIN_WINDOWS})", n_windows, "pts", levels
        )
    ra, rate_a = _residuals(na_w, ea_w)
    rb, rate_b = _residuals(nb_w, eb_w)
    if paired:
        se, df = se_batch_means(rb - ra), float(n_windows - 1)
        how = f"paired windows, {n_windows} windows"
    else:
        va, vb = se_batch_means(ra) ** 2, se_batch_means(rb) ** 2
        se, df = math.sqrt(va + vb), _welch_df(va, vb, len(ra), len(rb))
        how = f"unpaired windows (Welch), {len(ra)}+{len(rb)} windows"
    method = (
        f"error counts per window, {how}, window-clustered variance (t, AR(1)-inflated), never narrower "
        f"than Newcombe's per-request score interval ({int(na)}+{int(nb)} requests)"
    )
    base, cand = 100 * rate_a, 100 * rate_b
    counts = Counts(float(ea_w.sum()), na, float(eb_w.sum()), nb)
    return Estimate("error_rate", cand - base, 100 * se, df, base, cand, n_windows, method, "pts", counts,
                    scale=100.0)  # fmt: skip
