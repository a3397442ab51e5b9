"""Holm's step-down adjustment of p-values across the metrics of one comparison.

statsmodels' ``multipletests(method="holm")`` gives the same numbers (a test checks it) but calls
``gc.collect()`` on every call, 0.1-0.3 s in a process holding large frames — too slow for the
thousands of comparisons a calibration replay or a sequential canary makes.
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
