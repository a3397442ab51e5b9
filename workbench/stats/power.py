"""How long must an A/B test or a canary step run to detect a given effect?

From a pilot run, the spread of per-window differences between two arms of the same version is
measured (the pilot's requests are split at random into two pseudo-arms, as a 50/50 A/A split
would). To call an effect ``worse`` the interval's lower end must clear the margin, so with n
windows we need (effect - margin) >= (z_{1-alpha} + z_{power}) * sd / sqrt(n).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as sps

from workbench.stats.compare import Margin
from workbench.stats.windows import as_samples, window_table
from workbench.units import parse_duration


def window_spread(
    pilot: pd.DataFrame, metric: str, window: str | float = "5s", seed: int = 0
) -> tuple[float, float]:
    """(sd of per-window A/A differences, requests per window per pseudo-arm) from a pilot."""
    samples = as_samples(pilot)
    if samples is None or len(samples) == 0:
        raise ValueError("the pilot needs per-request samples (timestamp, latency_ms, status)")
    window_s = parse_duration(window)
    rng = np.random.default_rng(seed)
    half = rng.uniform(size=len(samples)) < 0.5
    origin = samples["timestamp"].min()
    wa = window_table(samples[half], window_s, origin)
    wb = window_table(samples[~half], window_s, origin)
    common = wa.index.intersection(wb.index)
    if len(common) < 3:
        raise ValueError(f"the pilot is too short: {len(common)} windows of {window_s:g} s (need >= 3)")
    col = "errors" if metric == "error_rate" else metric
    d = wb.loc[common, col].to_numpy(float) - wa.loc[common, col].to_numpy(float)
    if metric == "error_rate":
        d = 100 * d / wa.loc[common, "count"].to_numpy(float)
    return float(np.std(d, ddof=1)), float(wa.loc[common, "count"].mean())


def required_duration(
    effect: float,
    metric: str,
    rps: float,
    pilot: pd.DataFrame,
    margin: Margin | None = None,
    alpha: float = 0.05,
    power: float = 0.9,
    window: str | float = "5s",
    share: float = 0.5,
) -> float:
    """Seconds of load at ``rps`` (``share`` of it to the candidate) to detect ``effect``.

    ``effect`` is in ms for latency metrics and percentage points for ``error_rate``. Raises
    ValueError when the effect does not exceed the practical margin (it could never be called
    worse, only inconclusive).
    """
    margin = margin or Margin()
    window_s = parse_duration(window)
    sd, per_window = window_spread(pilot, metric, window)
    if metric == "error_rate":
        m = margin.error_rate_pct
    else:
        base = float(np.median(window_table(pilot, window_s, pilot["timestamp"].min())[metric]))
        m = margin.latency(base)
    if effect <= m:
        raise ValueError(
            f"an effect of {effect:g} does not exceed the {m:g} margin: it can never be called worse"
        )
    # Per-window noise shrinks with the requests per window; the smaller arm dominates.
    target_per_window = rps * min(share, 1 - share) * window_s
    sd_target = sd * math.sqrt(per_window / max(target_per_window, 1e-9))
    z = sps.norm.ppf(1 - alpha) + sps.norm.ppf(power)
    windows = max(3, math.ceil((z * sd_target / (effect - m)) ** 2))
    return windows * window_s
