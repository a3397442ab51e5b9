"""Holm's step-down procedure across the metrics of one comparison.

Holm (1979): order the k p-values, p_(1) <= ... <= p_(k); reject H_(1), H_(2), ... while
p_(j) <= alpha / (k - j + 1) and stop at the first that is not. The chance of rejecting any true
hypothesis stays <= alpha whatever the dependence between the tests, and every hypothesis
Bonferroni rejects Holm rejects too. ``holm`` gives the adjusted p-values (reject exactly when the
adjusted p-value is <= alpha); ``holm_levels`` gives the decisions and the level each hypothesis was
decided at, so an interval reported at that level agrees with the decision: alpha / (k - j + 1) for
the rejected ones, and for all others the level of the first one not rejected, alpha / (k - r) with
r rejections (no p-value beyond it is small enough there either).

statsmodels' ``multipletests(method="holm")`` gives the same adjusted values (a test checks it) but
calls ``gc.collect()`` on every call, 0.1-0.3 s in a process holding large frames — too slow for the
thousands of comparisons a calibration replay or a canary looking after every window makes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-adjusted p-values, in the input's order: max over j <= i of (m - j + 1) p_(j), capped at 1."""
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p, kind="stable")
    m = len(p)
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(stepped, 1.0)
    return out


def holm_levels(pvalues: Sequence[float], alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """(rejected, level) per hypothesis, in the input's order, for Holm's step-down at ``alpha``."""
    p = np.asarray(pvalues, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    steps = alpha / (m - np.arange(m))  # the level of the j-th smallest p-value
    fails = np.flatnonzero(p[order] > steps)
    r = int(fails[0]) if len(fails) else m  # rejections before the first failure
    rejected, level = np.zeros(m, dtype=bool), np.empty(m)
    rejected[order[:r]] = True
    level[order[:r]] = steps[:r]
    level[order[r:]] = alpha / (m - r) if r < m else np.nan
    return rejected, level
