"""Tail exceedances: how many of each arm's requests lie above the window's p99, a sharper tail test.

Why. A canary at 5 % of 1000 rps sees 250 requests in a 5-s window; the p99 of 250 requests rests
on its 2–3 largest values, so per-window p99 differences (``estimates.latency``) are noisy and a
confidence sequence over them needs minutes to call a +20 % p99 regression. The same windows hold
a sharper signal: the share of each arm's requests above the window's p99. Under "the candidate is
no slower" both shares are about 1 %; after a +20 % regression the candidate's is several times that.

The counts. In each window t_w is the q-quantile of both arms' latencies pooled (q = 0.99 for
p99); ``a`` counts the baseline's requests above t_w, ``b`` the candidate's above t_w + margin
(max(latency_ms, latency_pct % of t_w)). The threshold is a symmetric function of the pooled
window, so when the arms are one version split at random, both shares have the same expectation
whatever the window's load, bursts or drift: E[b/n_b - a/n_a] <= 0, and = 0 when the candidate is
slower by exactly the margin near the quantile — the boundary of "not worse".

The test. The shares are then treated as error rates are (``estimates.error_rate``): a ratio
estimator over windows with window-clustered, AR(1)-inflated variance — a burst in one arm moves
its share in a few windows, and the windows' spread says so — never narrower than the per-request
score interval. ``sequential.AnytimeTest`` turns that into a confidence-sequence e-value for the
tail metric and averages it with the metric's own (an average of e-values is an e-value, so the
chance of a false "worse" over all looks stays <= alpha by Ville's inequality). It is one-sided —
"is the candidate's tail worse beyond the margin?" — so it speeds up rollbacks only; promotion
still needs the metric's interval inside the margins. It needs both arms' requests in the same
windows (a concurrent split, samples not histograms): ``compare.window_tables(..., exceed=margin)``
adds the counts to the candidate's window table then.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from workbench.stats.windows import QUANTILE_METRICS

TAIL_METRICS = tuple(m for m, q in QUANTILE_METRICS.items() if q >= 0.9)
PARTS = ("a", "b")  # per metric: the baseline's and the candidate's requests above the thresholds


def column(metric: str, part: str) -> str:
    """The candidate window table's column for ``metric``'s count of arm ``part`` (one of PARTS)."""
    return f"exceed_{metric}_{part}"


def has_columns(table: pd.DataFrame | Mapping[str, object], metric: str) -> bool:
    return all(column(metric, p) in table for p in PARTS)


def counts(
    a_lat: np.ndarray,
    a_window: np.ndarray,
    b_lat: np.ndarray,
    b_window: np.ndarray,
    windows: np.ndarray,
    metrics: Iterable[str],
    latency_ms: float,
    latency_pct: float,
) -> dict[str, np.ndarray]:
    """Per window of ``windows`` and per tail metric: the baseline's requests above the pooled
    quantile t_w and the candidate's above t_w + margin (0 and 0 where an arm has no request).
    ``*_window``: each request's window number."""
    metrics = [m for m in metrics if m in TAIL_METRICS]
    out = {column(m, p): np.zeros(len(windows)) for m in metrics for p in PARTS}
    a_order, b_order = np.argsort(a_window, kind="stable"), np.argsort(b_window, kind="stable")
    a_lat, a_window = a_lat[a_order], a_window[a_order]
    b_lat, b_window = b_lat[b_order], b_window[b_order]
    a_lo, a_hi = np.searchsorted(a_window, windows), np.searchsorted(a_window, windows, side="right")
    b_lo, b_hi = np.searchsorted(b_window, windows), np.searchsorted(b_window, windows, side="right")
    qs = np.array([QUANTILE_METRICS[m] for m in metrics])
    for i in range(len(windows)):
        a, b = a_lat[a_lo[i] : a_hi[i]], b_lat[b_lo[i] : b_hi[i]]
        if not len(a) or not len(b) or not len(qs):
            continue
        thresholds = np.quantile(np.concatenate([a, b]), qs)
        for m, t in zip(metrics, thresholds, strict=True):
            out[column(m, "a")][i] = np.count_nonzero(a > t)
            out[column(m, "b")][i] = np.count_nonzero(b > t + max(latency_ms, latency_pct / 100.0 * abs(t)))
    return out


def table_columns(
    a: pd.DataFrame,
    b: pd.DataFrame,
    window_s: float,
    origin: pd.Timestamp,
    index: pd.Index,
    latency_ms: float,
    latency_pct: float,
    metrics: Iterable[str] = TAIL_METRICS,
) -> pd.DataFrame:
    """The exceedance columns for the candidate's window table (index ``index``), from both arms'
    per-request samples cut into windows of ``window_s`` from ``origin``."""
    start = np.datetime64(origin.tz_convert(None) if origin.tzinfo else origin, "ns").view(np.int64)
    width = int(window_s * 1e9)

    def number(x: pd.DataFrame) -> np.ndarray:
        return (x["timestamp"].to_numpy(dtype="datetime64[ns]").view(np.int64) - start) // width

    found = counts(
        a["latency_ms"].to_numpy(dtype=float), number(a), b["latency_ms"].to_numpy(dtype=float), number(b),
        index.to_numpy(), metrics, latency_ms, latency_pct,
    )  # fmt: skip
    return pd.DataFrame(found, index=index)
