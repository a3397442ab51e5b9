"""The judges users would otherwise pick — for comparison in the calibration benchmark only.

- ``kayenta_mannwhitney``: Kayenta's Mann-Whitney classifier as its documentation describes it:
  a two-sided Mann-Whitney U test on the metric's time-series points (here: per-window values) at
  98 % confidence; a significant difference counts only if the Hodges-Lehmann estimate exceeds
  the tolerance (a fraction of the baseline's median), and the effect direction decides.
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
    baseline: np.ndarray, candidate: np.ndarray, confidence: float = 0.98, tolerance: float = 0.25
) -> str:
    """'worse', 'better' or 'pass' from per-window metric values of each arm."""
    baseline, candidate = np.asarray(baseline, float), np.asarray(candidate, float)
    if len(baseline) < 2 or len(candidate) < 2:
        return "pass"
    p = sps.mannwhitneyu(candidate, baseline, alternative="two-sided").pvalue
    hl = float(np.median(np.subtract.outer(candidate, baseline)))  # Hodges-Lehmann shift
    if p >= 1 - confidence or abs(hl) <= tolerance * abs(float(np.median(baseline))):
        return "pass"
    return "worse" if hl > 0 else "better"


def threshold(candidate_value: float, limit: float) -> str:
    """'worse' when the candidate's value exceeds the fixed limit, else 'pass'."""
    return "worse" if candidate_value > limit else "pass"


def naive_mannwhitney(a: pd.DataFrame, b: pd.DataFrame, alpha: float = 0.05) -> str:
    """'worse' when a one-sided per-request MWU test says b's latencies are larger."""
    p = sps.mannwhitneyu(b["latency_ms"], a["latency_ms"], alternative="greater").pvalue
    return "worse" if p < alpha else "pass"
