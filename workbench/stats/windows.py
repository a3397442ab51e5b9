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

from workbench.load.results import LoadResult, error_mask
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
    ts = samples["timestamp"]
    ns = ts.to_numpy(dtype="datetime64[ns]") - np.datetime64(
        origin.tz_convert(None) if origin.tzinfo else origin
    )
    w = (ns.astype(np.int64) // int(window_s * 1e9)).astype(np.int64)
    w_offset = int(w.min())
    lat = samples["latency_ms"].to_numpy(dtype=float)
    err = error_mask(samples["status"].to_numpy())
    w -= w.min()
    # One integer sort orders by (window, latency): the window in the high 32 bits, the latency's
    # float32 bits (monotonic for values >= 0) in the low 32. About as fast as sorting the
    # latencies alone; quantiles keep float32 precision (1e-7 relative, 0.1 us at 1 s).
    bits = np.clip(lat, 0, None).astype(np.float32).view(np.uint32).astype(np.int64)
    key = np.sort((w << 32) | bits)
    w_sorted = key >> 32
    lat_sorted = (key & 0xFFFFFFFF).astype(np.uint32).view(np.float32).astype(np.float64)
    starts = np.r_[0, np.flatnonzero(np.diff(w_sorted)) + 1]
    windows, counts = w_sorted[starts], np.diff(np.r_[starts, len(key)])
    pos = np.searchsorted(windows, w)
    out = pd.DataFrame(index=pd.Index(windows + w_offset, name="window"))
    out["count"] = counts.astype(float)
    out["errors"] = np.bincount(pos[err], minlength=len(windows)).astype(float)
    out["mean"] = np.bincount(pos, weights=lat, minlength=len(windows)) / counts
    for name, q in QUANTILE_METRICS.items():
        h = starts + (counts - 1) * q  # numpy's default 'linear' quantile, per window
        lo = np.floor(h).astype(np.int64)
        hi = np.minimum(lo + 1, starts + counts - 1)
        out[name] = lat_sorted[lo] + (h - lo) * (lat_sorted[hi] - lat_sorted[lo])
    return out


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
