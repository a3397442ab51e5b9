"""The judges users would otherwise pick — for comparison in the calibration benchmark only.

- ``kayenta_mannwhitney``: Kayenta's Mann-Whitney classifier as its documentation describes it:
  a two-sided Mann-Whitney U test on the metric's time-series points (here: per-window values) at
  98 % confidence; a significant difference counts only if the Hodges-Lehmann estimate exceeds
  the tolerance (a fraction of the baseline's median) and the mean ratio candidate / baseline
  exceeds the allowed increase (Kayenta's ``effectSize``; default 1.0, i.e. any increase).
- ``threshold``: Flagger / Argo Rollouts style: the candidate's metric over the interval against
  a fixed limit, no baseline, no uncertainty.
- ``naive_mannwhitney``: one Mann-Whitney U test on all per-request latencies — what a per-request
  test on autocorrelated samples gives.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps


def kayenta_mannwhitney(
    baseline: np.ndarray,
    candidate: np.ndarray,
    confidence: float = 0.98,
    tolerance: float = 0.25,
    allowed_increase: float = 1.0,
    allowed_decrease: float = 1.0,
) -> str:
    """'worse', 'better' or 'pass' from per-window metric values of each arm."""
    baseline, candidate = np.asarray(baseline, float), np.asarray(candidate, float)
    if len(baseline) < 2 or len(candidate) < 2:
        return "pass"
    p = sps.mannwhitneyu(candidate, baseline, alternative="two-sided").pvalue
    hl = float(np.median(np.subtract.outer(candidate, baseline)))  # Hodges-Lehmann shift
    if p >= 1 - confidence or abs(hl) <= tolerance * abs(float(np.median(baseline))):
        return "pass"
    mean_ratio = float(np.mean(candidate) / np.mean(baseline)) if np.mean(baseline) else float("inf")
    if hl > 0:
        return "worse" if mean_ratio > allowed_increase else "pass"
    return "better" if mean_ratio < allowed_decrease else "pass"


def threshold(candidate_value: float, limit: float) -> str:
    """'worse' when the candidate's value exceeds the fixed limit, else 'pass'."""
    return "worse" if candidate_value > limit else "pass"


def naive_mannwhitney(a: pd.DataFrame, b: pd.DataFrame, alpha: float = 0.05) -> str:
    """'worse' when a one-sided per-request MWU test says b's latencies are larger."""
    p = sps.mannwhitneyu(b["latency_ms"], a["latency_ms"], alternative="greater").pvalue
    return "worse" if p < alpha else "pass"
