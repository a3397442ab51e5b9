"""Time windows, the statistics' unit of analysis.

Requests within a burst, a GC pause or a queue are not independent, so a per-request test calls
trivia significant. Each arm is cut into short windows (default 5 s) and every window becomes one
observation: its request count, error count, mean and quantiles — from the window's samples, or
from its histogram when only buckets exist (Prometheus, fortio). Windows are aligned to one
origin across arms, so windows of arms that ran at the same time can be paired.

Accepted input (``WindowInput``): per-request samples (a frame with timestamp, latency_ms, status,
or a LoadResult); or per-window histograms — a Series (timestamp → Histogram), pairs
``(timestamp, Histogram)``, triples ``(timestamp, Histogram, errors)``, or a frame with columns
``time`` (or a DatetimeIndex), ``histogram`` and optionally ``requests`` and ``errors`` (the shape
``metrics.dialects.arm_windows`` gives). Without counts a window's errors are 0 and its requests
the histogram's count; with them, error_rate works from telemetry (Prometheus) too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from workbench.load.results import LoadResult
from workbench.metrics.histogram import Histogram

QUANTILE_METRICS = {"p50": 0.50, "p75": 0.75, "p90": 0.90, "p95": 0.95, "p99": 0.99, "p999": 0.999}
STAT_COLUMNS = ["count", "errors", "mean", *QUANTILE_METRICS]

WindowInput = (
    pd.DataFrame
    | LoadResult
    | pd.Series
    | Iterable[tuple[Any, Histogram]]
    | Iterable[tuple[Any, Histogram, float]]
)
HISTOGRAM_COLUMNS = ("histogram", "requests", "errors")


def as_samples(x: WindowInput) -> pd.DataFrame | None:
    """The per-request frame of ``x`` (None when ``x`` holds per-window histograms)."""
    if isinstance(x, LoadResult):
        if len(x.samples) == 0 and x.histogram is not None:
            raise ValueError("a histogram-only LoadResult has no time windows; pass per-window histograms")
        return x.samples
    if isinstance(x, pd.DataFrame):
        if "histogram" in x.columns:
            return None
        missing = {"timestamp", "latency_ms", "status"} - set(x.columns)
        if missing:
            raise ValueError(
                f"samples need columns timestamp, latency_ms, status (missing {sorted(missing)})"
            )
        return x
    return None


def start_of(x: WindowInput) -> pd.Timestamp | None:
    """The earliest timestamp of ``x``."""
    samples = as_samples(x)
    if samples is not None:
        return pd.Timestamp(samples["timestamp"].min()) if len(samples) else None
    frame = _hist_frame(x)
    return pd.Timestamp(frame.index.min()) if len(frame) else None


def window_table(x: WindowInput, window_s: float, origin: pd.Timestamp) -> pd.DataFrame:
    """One row per window (index: window number from ``origin``) with STAT_COLUMNS."""
    samples = as_samples(x)
    if samples is not None:
        return _from_samples(samples, window_s, origin)
    return _from_histograms(_hist_frame(x), window_s, origin)


def _from_samples(samples: pd.DataFrame, window_s: float, origin: pd.Timestamp) -> pd.DataFrame:
    if len(samples) == 0:
        return pd.DataFrame(columns=STAT_COLUMNS, dtype=float)
    ns = samples["timestamp"].to_numpy(dtype="datetime64[ns]") - np.datetime64(
        origin.tz_convert(None) if origin.tzinfo else origin
    )
    w = ns.view(np.int64) // int(window_s * 1e9)
    w_offset = int(w.min())
    w -= w_offset
    lat = np.ascontiguousarray(samples["latency_ms"].to_numpy(dtype=float))
    status = samples["status"].to_numpy()
    err = (status <= 0) | (status >= 500)
    n_windows = int(w.max()) + 1
    sums_all = np.bincount(w, weights=lat, minlength=n_windows)
    errors_all = np.bincount(w[err], minlength=n_windows)
    counts_all, quantiles = _window_quantiles(w, lat, n_windows)  # reuses w's memory
    present = np.flatnonzero(counts_all)
    counts = counts_all[present]
    columns = np.empty((len(present), len(STAT_COLUMNS)))
    columns[:, 0], columns[:, 1], columns[:, 2] = counts, errors_all[present], sums_all[present] / counts
    columns[:, 3:] = quantiles[present]
    return pd.DataFrame(columns, index=pd.Index(present + w_offset, name="window"), columns=STAT_COLUMNS)


CELLS = 1 << 20  # (window, bucket) cells of the selection's count table


def _window_quantiles(w: np.ndarray, lat: np.ndarray, n_windows: int) -> tuple[np.ndarray, np.ndarray]:
    """(requests per window, numpy's default 'linear' quantiles of each window's ``lat``: one row per
    window number 0..n_windows-1, one column per QUANTILE_METRICS entry; NaN where a window is empty).

    Selection, not sorting: the quantiles interpolate between a dozen order statistics per window,
    found exactly in two linear passes. Every latency falls in a bucket of its float bits (IEEE
    doubles, made order-preserving, keep their order as integers; the top bits are a log-scale
    bucket); one count table per (window, bucket) says in which bucket each wanted rank lies and at
    which rank within it; only the few values in those buckets are then sorted. A full sort of the
    latencies would cost n log n."""
    bits = lat.view(np.uint64)
    flip = bits >> np.uint64(63)  # negatives: invert every bit; others: set the sign bit
    flip *= np.uint64(0x7FFFFFFFFFFFFFFF)
    flip += np.uint64(1 << 63)
    key = np.bitwise_xor(bits, flip, out=flip)  # unsigned-integer order = float order
    key -= key.min()
    per_window = max(CELLS // n_windows, 2)
    key >>= np.uint64(max(int(key.max()) // per_window, 0).bit_length())
    key = key.view(np.int64)
    buckets = int(key.max()) + 1
    w *= buckets
    key += w  # the (window, bucket) cell of every latency
    table = np.bincount(key, minlength=n_windows * buckets)
    counts = table.reshape(n_windows, buckets).sum(axis=1)
    qs = np.fromiter(QUANTILE_METRICS.values(), dtype=float)
    h = (counts[:, None] - 1) * qs  # numpy 'linear': between ranks floor(h) and floor(h) + 1
    lo = np.floor(h).astype(np.int64)
    hi = np.minimum(lo + 1, counts[:, None] - 1)
    filled = counts > 0
    starts = np.cumsum(counts) - counts
    ranks = (starts[:, None] + np.concatenate([lo, hi], axis=1))[filled]  # global ranks wanted
    cumulative = np.cumsum(table)
    cells = np.searchsorted(cumulative, ranks, side="right")
    within = ranks - (cumulative[cells] - table[cells])
    wanted = np.zeros(len(table), dtype=bool)
    wanted[cells] = True
    chosen = np.flatnonzero(wanted[key])
    chosen_keys = key[chosen]
    order = np.lexsort((lat[chosen], chosen_keys))
    values = lat[chosen][order]
    first = np.searchsorted(chosen_keys[order], cells)  # where each wanted cell's values begin
    stats = values[first + within]
    k = len(qs)
    out = np.full((n_windows, k), np.nan)
    out[filled] = stats[:, :k] + (h[filled] - lo[filled]) * (stats[:, k:] - stats[:, :k])
    return counts, out


def _hist_frame(x: Any) -> pd.DataFrame:
    """Per-window input as a frame (UTC DatetimeIndex, sorted) with histogram, requests, errors;
    requests/errors are NaN where the input gave none."""
    if isinstance(x, pd.DataFrame):
        frame = x.set_index("time") if "time" in x.columns else x
        frame = frame.reindex(columns=list(HISTOGRAM_COLUMNS))
    elif isinstance(x, pd.Series):
        frame = pd.DataFrame({"histogram": x}).reindex(columns=list(HISTOGRAM_COLUMNS))
    else:
        rows = list(x)
        if any(len(r) not in (2, 3) for r in rows):
            raise ValueError(
                "per-window input must be (timestamp, Histogram) or (timestamp, Histogram, errors)"
            )
        frame = pd.DataFrame(
            {
                "histogram": [r[1] for r in rows],
                "requests": np.nan,
                "errors": [float(r[2]) if len(r) == 3 else np.nan for r in rows],
            },
            index=pd.DatetimeIndex([pd.Timestamp(r[0]) for r in rows]),
        )
    if len(frame) and not all(isinstance(h, Histogram) for h in frame["histogram"]):
        raise ValueError("per-window input must map timestamps to Histogram objects (column 'histogram')")
    for column in ("requests", "errors"):
        values = pd.to_numeric(frame[column], errors="coerce")
        if (values < 0).any():
            raise ValueError(f"per-window input: column '{column}' must not be negative")
        frame = frame.assign(**{column: values})
    idx = pd.DatetimeIndex(frame.index)
    frame.index = idx.tz_localize("UTC") if idx.tz is None else idx
    return frame.sort_index()


def _from_histograms(frame: pd.DataFrame, window_s: float, origin: pd.Timestamp) -> pd.DataFrame:
    if len(frame) == 0:
        return pd.DataFrame(columns=STAT_COLUMNS, dtype=float)
    from workbench.metrics.histogram import merge

    w = ((frame.index - origin).total_seconds() // window_s).astype(int)
    rows = {}
    for window, group in frame.groupby(w):
        hists = group["histogram"].tolist()
        h = merge(*hists) if len(hists) > 1 else hists[0]
        requests = group["requests"]
        # count: the requests counter where given (it also sees requests the histogram missed)
        count = float(requests.fillna(pd.Series([x.count for x in hists], index=group.index)).sum())
        errors = float(group["errors"].fillna(0.0).sum())
        if errors > count:
            raise ValueError(f"per-window input: window at {group.index[0]} has more errors than requests")
        row = {"count": count, "errors": errors, "mean": float(h.mean) if h.count else np.nan}
        row.update(
            {name: float(h.quantile(q)) if h.count else np.nan for name, q in QUANTILE_METRICS.items()}
        )
        rows[int(window)] = row
    out = pd.DataFrame.from_dict(rows, orient="index")[STAT_COLUMNS]
    out.index.name = "window"
    return out
