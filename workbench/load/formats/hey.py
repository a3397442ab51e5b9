"""``hey -o csv`` output as a LoadResult.

hey writes one row per answered request — ``response-time,DNS+dialup,DNS,Request-write,
Response-delay,Response-read,status-code,offset`` — with times in seconds to 0.1 ms
(``%4.4f``) and ``offset`` the request's start relative to the run's start. Requests that failed
without a response (connection refused, timeout) are not in the CSV at all, so the error rate seen
here counts only HTTP error statuses. The CSV holds neither the run's wall-clock start nor its
settings: pass ``start`` for true timestamps (else it is estimated from the file's modification
time, and ``meta["start_estimated"]`` says so); ``model``, ``rps`` and ``connections`` are None.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from workbench.load.formats.k6 import head_text
from workbench.load.results import LoadResult, ResultFileError, sample_meta

__all__ = ["COLUMNS", "read_hey"]

COLUMNS = (
    "response-time",
    "DNS+dialup",
    "DNS",
    "Request-write",
    "Response-delay",
    "Response-read",
    "status-code",
    "offset",
)
REQUIRED = ("response-time", "status-code", "offset")


def _column(path: Path, frame: pd.DataFrame, name: str) -> np.ndarray:
    values = pd.to_numeric(frame[name], errors="coerce")
    bad = values.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ResultFileError(
            path, name, f"not a number in data row {row + 1}: {frame[name].iloc[row]!r:.40}"
        )
    return values.to_numpy(dtype=float)


def _read(path: Path) -> pd.DataFrame:
    header = head_text(path, 4096).split("\n", 1)[0].strip().split(",")
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise ResultFileError(path, "columns", f"missing required columns {', '.join(missing)}")
    try:
        return pd.read_csv(path, usecols=list(REQUIRED), dtype=str, keep_default_na=False)
    except (ValueError, pd.errors.ParserError, OSError) as exc:
        raise ResultFileError(path, "CSV", f"cannot parse ({exc})") from None


def read_hey(path: str | Path, start: datetime | None = None) -> LoadResult:
    """The requests of a ``hey -o csv`` file; ``start`` = when the run began (aware datetime)."""
    path = Path(path)
    frame = _read(path)
    latency_s = _column(path, frame, "response-time")
    offset_s = _column(path, frame, "offset")
    status = _column(path, frame, "status-code")
    if (latency_s < 0).any() or (offset_s < 0).any():
        raise ResultFileError(path, "response-time", "negative times")
    ends_s = offset_s + latency_s
    duration = float(ends_s.max()) if len(ends_s) else None
    estimated = start is None
    if start is None:
        mtime = datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)
        start = mtime - timedelta(seconds=duration or 0.0)
    elif start.tzinfo is None:
        raise ValueError("start must be timezone-aware")
    origin = pd.Timestamp(start).tz_convert("UTC")
    samples = pd.DataFrame(
        {
            "timestamp": origin + pd.to_timedelta(np.round(ends_s * 1e9).astype("int64"), unit="ns"),
            "latency_ms": latency_s * 1000.0,
            "status": status.astype("int64"),
            "variant": pd.Series([""] * len(frame), dtype="str"),
        }
    )
    meta = sample_meta("hey", path, samples, start, start + timedelta(seconds=duration or 0.0), duration)
    meta["start_estimated"] = estimated
    return LoadResult(meta, samples)
