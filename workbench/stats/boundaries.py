"""Critical values and one-sided p-values: for one look (fixed sample) or for any number of looks.

Every metric of a comparison is summarised as an estimate, a standard error and degrees of freedom
(``compare.py``); what differs between a report read once and a canary looked at after every
window is only how far from the estimate a bound must lie, and how a statistic turns into a
p-value. Two rules:

- ``FixedSample``: Student t with the estimate's degrees of freedom (one look, decided once).
- ``Anytime``: a confidence sequence. The boundary is the one-sided normal-mixture boundary of
  Robbins (1970) and Howard, Ramdas, McAuliffe & Sekhon (2021, "Time-uniform, nonparametric,
  nonasymptotic confidence sequences"), applied with an estimated long-run variance as in
  Waudby-Smith, Arnold, Wu, Howard & Ramdas ("Time-uniform central limit theory and asymptotic
  confidence sequences", 2021/2024): with S_t the standardised sum of t increments against the
  null value, the mixture over a half-normal (scale rho) of exp(lambda S_t - lambda^2 t / 2),

      M_t = 2 / sqrt(1 + t rho^2) * exp(rho^2 S_t^2 / (2 (1 + t rho^2))) * Phi(rho S_t / sqrt(1 + t rho^2)),

  is a nonnegative supermartingale under H0: mean <= null value, so by Ville's inequality
  P(M_t >= 1/alpha for some t) <= alpha: the p-value 1/M_t and the bound where M_t = 1/alpha hold
  at every look at once, however many looks are made and whenever one stops. rho is chosen so that
  the boundary is tightest after ``optimise_at`` windows (Howard et al.'s choice
  rho^2 = (-2 log alpha + log(1 - 2 log alpha)) / t*). The increments are time windows, whose
  variance is estimated from the windows themselves (inflated for lag-1 autocorrelation), so the
  guarantee is asymptotic in the number of windows. To keep early looks honest, where the variance
  rests on a few windows, the standard error is widened by t_{df} / z at 97.5 % — the factor by
  which Student t widens a 95 % interval over the normal one (4.30 / 1.96 at 3 windows, 1.12 at 12,
  1.04 at 30): without it, A/A replays looking after every window of a one-minute run say "worse"
  at zero margin up to 10 % of the time for p99; with it they stay below alpha in every scenario of
  ``calibration.py`` (the tests check).

A rule answers two questions for a t statistic with ``df`` degrees of freedom (``df=inf``: a
normal statistic, e.g. a per-request score interval) from ``n`` windows: ``pvalue(t, df, n)``, the
one-sided p-value of "the effect lies beyond the null value", and ``critical(level, df, n)``, how
many standard errors a one-sided bound at ``level`` lies from the estimate. The two are
consistent: pvalue <= level exactly when t >= critical(level).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from scipy import optimize
from scipy import special as spc

__all__ = ["Anytime", "FixedSample", "Rule", "mixture_boundary", "mixture_log_value"]


@dataclass(frozen=True)
class FixedSample:
    """One look: Student t (normal for df = inf)."""

    name: str = "fixed sample"

    def pvalue(self, t: float, df: float, n: int) -> float:
        return float(spc.stdtr(df, -t)) if math.isfinite(df) else float(spc.ndtr(-t))

    def critical(self, level: float, df: float, n: int) -> float:
        return float(-spc.stdtrit(df, level)) if math.isfinite(df) else float(-spc.ndtri(level))


@dataclass(frozen=True)
class Anytime:
    """Looks of a confidence sequence over windows, tightest at ``optimise_at`` windows.

    ``alpha`` only tunes the mixture (rho); the levels tested come with each question."""

    optimise_at: float = 12.0
    alpha: float = 0.05
    name: str = "confidence sequence"

    def x(self, n: int) -> float:
        """t rho^2 after ``n`` windows: n / optimise_at times Howard et al.'s tuning constant."""
        la = -2.0 * math.log(self.alpha)
        return max(n, 1) / max(self.optimise_at, 1.0) * (la + math.log(1.0 + la))

    def pvalue(self, t: float, df: float, n: int) -> float:
        return float(min(1.0, math.exp(-self.log_value(t, df, n))))

    def log_value(self, t: float, df: float, n: int) -> float:
        """log M: the mixture's e-value for t (its p-value is 1 / M, capped at 1)."""
        return mixture_log_value(t / small_sample_factor(df), self.x(n))

    def critical(self, level: float, df: float, n: int) -> float:
        return mixture_boundary(self.x(n), level) * small_sample_factor(df)


Rule = FixedSample | Anytime


@lru_cache(maxsize=1024)
def small_sample_factor(df: float) -> float:
    """t_df / z at 97.5 %: how much wider a 95 % interval gets when its variance rests on df + 1
    windows (1 for df = inf, e.g. a per-request score interval)."""
    if not math.isfinite(df):
        return 1.0
    return float(-spc.stdtrit(max(df, 1.0), 0.025) / -spc.ndtri(0.025))


def mixture_log_value(z: float, x: float) -> float:
    """log M for a standardised statistic z (= S_t / sqrt(t)) at x = t rho^2 (see the module docstring)."""
    return (
        math.log(2.0)
        - 0.5 * math.log1p(x)
        + x * z * z / (2.0 * (1.0 + x))
        + float(spc.log_ndtr(z * math.sqrt(x / (1.0 + x))))
    )


@lru_cache(maxsize=4096)
def mixture_boundary(x: float, level: float) -> float:
    """The z at which the one-sided mixture reaches 1/level (log M is increasing in z)."""
    target = -math.log(level)
    hi = 4.0
    while mixture_log_value(hi, x) < target:
        hi *= 2.0
    return float(optimize.brentq(lambda z: mixture_log_value(z, x) - target, -hi, hi, xtol=1e-10))
