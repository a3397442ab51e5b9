"""Time windows, the statistics' unit of analysis.

Requests within a burst, a GC pause or a queue are not independent, so a per-request test calls
trivia significant. Each arm is cut into short windows (default 5 s) and every window becomes one
observation: its request count, error count, mean and quantiles — from the window's samples, or
from its histogram when only buckets exist (Prometheus, fortio). Windows are aligned to one
origin across arms, so windows of arms that ran at the same time can be paired. A window's
quantiles are numpy's default ('linear') ones, found by selection rather than by sorting every
latency (``_window_quantiles``): a table of 10 M requests takes a fraction of np.sort's time.

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
        if not len(samples):
            return None
        ts = samples["timestamp"]
        first = pd.Timestamp(ts.to_numpy(dtype="datetime64[ns]").min())  # UTC; numpy's min, no NaT pass
        tz = getattr(ts.dtype, "tz", None)
        return first.tz_localize("UTC").tz_convert(tz) if tz is not None else first
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
    t = samples["timestamp"].to_numpy(dtype="datetime64[ns]").view(np.int64)
    start = np.datetime64(origin.tz_convert(None) if origin.tzinfo else origin, "ns").view(np.int64)
    width = int(window_s * 1e9)
    lat = np.ascontiguousarray(samples["latency_ms"].to_numpy(dtype=float))
    err = error_mask(samples["status"].to_numpy())
    if len(t) > 1 and not bool((t[1:] >= t[:-1]).all()):  # not in time order: group the windows first
        order = np.argsort(t, kind="stable")  # timsort: nearly sorted input (k6's) is cheap
        t, lat, err = t[order], lat[order], err[order]
    first, last = (int(t[0]) - start) // width, (int(t[-1]) - start) // width
    edges = start + width * np.arange(first, last + 2, dtype=np.int64)
    bounds = np.searchsorted(t, edges)  # each window's run of the (time-ordered) data
    counts_all = np.diff(bounds)
    present = np.flatnonzero(counts_all)
    starts, counts = bounds[present], counts_all[present]
    columns = np.empty((len(present), len(STAT_COLUMNS)))
    columns[:, 0] = counts
    failed = np.flatnonzero(err)
    columns[:, 1] = np.bincount(np.searchsorted(starts, failed, side="right") - 1, minlength=len(starts))
    columns[:, 2] = np.add.reduceat(lat, starts) / counts
    columns[:, 3:] = _window_quantiles(lat, starts, counts)
    return pd.DataFrame(columns, index=pd.Index(present + first, name="window"), columns=STAT_COLUMNS)


CHUNK = 1 << 16  # latencies selected in one go (a window that is larger goes alone): cache-sized
CELLS = 1 << 14  # (window, bucket) cells of one chunk's count table


def _window_quantiles(lat: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """numpy's default ('linear') quantiles of each window of ``lat`` (the window at ``starts[i]``
    holds ``counts[i]`` latencies): one row per window, one column per QUANTILE_METRICS entry.

    Selection, not sorting: the quantiles interpolate between a dozen order statistics per window,
    found exactly in linear passes over cache-sized chunks of whole windows (``_select``). A full
    sort of the latencies would cost n log n."""
    out = np.empty((len(counts), len(QUANTILE_METRICS)))
    chunk = (np.cumsum(counts) - counts) // CHUNK  # consecutive windows, about CHUNK latencies each
    edges = np.r_[0, np.flatnonzero(np.diff(chunk)) + 1, len(counts)]
    for i, j in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True):
        end = int(starts[j - 1] + counts[j - 1])
        out[i:j] = _select(lat[int(starts[i]) : end], counts[i:j])
    return out


def _select(lat: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The quantiles of consecutive windows of ``lat`` (runs of ``counts``), exactly.

    Every latency falls in a bucket of its float bits (IEEE doubles keep their order as integers,
    negatives once made order-preserving; the top bits are a log-scale bucket); one count table per
    (window, bucket) says in which bucket each wanted rank lies and at which rank within it; only the
    few latencies in those buckets are then sorted."""
    n_windows = len(counts)
    per_window = max(CELLS // n_windows, 2)
    key = lat.view(np.int64)
    low = int(key.min())
    if low >= 0:  # the usual case: no negative latency, the bits as they are
        key = key - low
        key >>= max(int(key.max()) // per_window, 0).bit_length()
    else:  # negative values (e.g. self-times): make the bits order-preserving as unsigned integers
        bits = lat.view(np.uint64)
        flip = bits >> np.uint64(63)  # negatives: invert every bit; others: set the sign bit
        flip *= np.uint64(0x7FFFFFFFFFFFFFFF)
        flip += np.uint64(1 << 63)
        ordered = np.bitwise_xor(bits, flip, out=flip)
        ordered -= ordered.min()
        ordered >>= np.uint64(max(int(ordered.max()) // per_window, 0).bit_length())
        key = ordered.view(np.int64)
    buckets = int(key.max()) + 1
    if n_windows > 1:
        key += np.repeat(np.arange(0, n_windows * buckets, buckets), counts)  # the (window, bucket) cell
    table = np.bincount(key, minlength=n_windows * buckets)
    qs = np.fromiter(QUANTILE_METRICS.values(), dtype=float)
    h = (counts[:, None] - 1) * qs  # numpy 'linear': between ranks floor(h) and floor(h) + 1
    lo = np.floor(h).astype(np.int64)
    hi = np.minimum(lo + 1, counts[:, None] - 1)
    ranks = (np.cumsum(counts) - counts)[:, None] + np.concatenate([lo, hi], axis=1)  # in the chunk
    cumulative = np.cumsum(table)
    cells = np.searchsorted(cumulative, ranks, side="right")
    within = ranks - (cumulative[cells] - table[cells])
    wanted = np.zeros(len(table), dtype=bool)
    wanted[cells] = True
    chosen = np.flatnonzero(wanted[key])
    chosen_keys = key[chosen]
    order = np.lexsort((lat[chosen], chosen_keys))
    values = lat[chosen][order]
    stats = values[np.searchsorted(chosen_keys[order], cells) + within]
    k = len(qs)
    return stats[:, :k] + (h - lo) * (stats[:, k:] - stats[:, :k])


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
