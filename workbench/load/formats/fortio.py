"""fortio and nighthawk (``--output-format fortio``) JSON results as LoadResults.

fortio saves one JSON object per run: run settings, ``RetCodes`` and ``DurationHistogram``
(seconds; ``Data`` buckets with ``Start``/``End``/``Count``, the first starting at ``Min``, the
last ending at ``Max``, empty buckets left out) with the ``Percentiles`` fortio computed from it.
Shapes handled:

- fortio 1.x as used by Istio's 1.2 benchmarks (``RequestedQPS`` a string such as "1000" or "max",
  ``ActualDuration`` in ns, ``NumThreads`` = connections);
- current fortio, which adds ``ErrorsDurationHistogram``, ``Jitter``, ``Uniform``, ``NoCatchUp``,
  ``ConnectionStats``… and may give ``RequestedQPS`` as a number;
- nighthawk's fortio-compatible output: uint64 fields as JSON strings, a first bucket of zero width
  at the minimum with ``Percent`` 0, buckets drawn from HdrHistogram percentiles, ``RetCodes``
  holding only the 2xx count, and in older releases ``Percentiles`` as fractions (0.5 for p50).
  It is detected by that first bucket or a "Nighthawk" label.

fortio's own ``Percentiles`` are kept as ``meta["percentiles_ms"]`` (what fortio reported is what
the summary shows); ``DurationHistogram`` becomes the histogram for everything else.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from workbench.load.results import LoadResult, ResultFileError
from workbench.metrics.histogram import Histogram

__all__ = ["Fields", "is_nighthawk", "load_json", "percentile_key", "read_fortio"]

NIGHTHAWK_LABEL = "Nighthawk"
NIGHTHAWK_SECONDS_BELOW = 1e6  # old nighthawk wrote ActualDuration in s, fortio and newer ones in ns


def percentile_key(percentile: float) -> str:
    """``"p50"``, ``"p999"`` (99.9), ``"p9999"`` (99.99); below 10 the dot stays (``"p2.5"``)."""
    text = f"{percentile:g}"
    return "p" + (text.replace(".", "") if percentile >= 10 else text)


def load_json(path: Path) -> Any:
    """The parsed JSON document; ResultFileError for unreadable, empty, truncated or invalid JSON."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ResultFileError(path, "file", "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultFileError(path, "file", f"cannot read ({exc})") from None
    if not text.strip():
        raise ResultFileError(path, "file", "empty file")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        what = "truncated JSON" if exc.pos >= len(text.rstrip()) else "invalid JSON"
        raise ResultFileError(
            path, "JSON", f"{what} at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None


class Fields:
    """Typed access to a JSON object's fields, with errors naming the file and the field path."""

    def __init__(self, path: Path, obj: dict[str, Any], prefix: str = ""):
        self.path, self.obj, self.prefix = path, obj, prefix

    def error(self, key: str, problem: str) -> ResultFileError:
        return ResultFileError(self.path, self.prefix + key, problem)

    def number(self, key: str) -> float:
        """A required finite number."""
        value = self.optional_number(key)
        if value is None:
            raise self.error(key, "missing")
        return value

    def optional_number(self, key: str) -> float | None:
        """A finite number or None; numeric strings accepted (nighthawk's uint64)."""
        value = self.obj.get(key)
        if value is None:
            return None
        if isinstance(value, bool):
            raise self.error(key, f"expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise self.error(key, f"expected a number, got {value!r:.60}") from None
        if not math.isfinite(number):
            raise self.error(key, f"expected a finite number, got {value!r}")
        return number

    def string(self, key: str, *, required: bool = False) -> str | None:
        value = self.obj.get(key)
        if value is None:
            if required:
                raise self.error(key, "missing")
            return None
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {value!r:.60}")
        return value

    def mapping(self, key: str, *, required: bool = True) -> dict[str, Any] | None:
        value = self.obj.get(key)
        if value is None:
            if required:
                raise self.error(key, "missing")
            return None
        if not isinstance(value, dict):
            raise self.error(key, f"expected an object, got {type(value).__name__}")
        return value

    def child(self, key: str) -> Fields:
        value = self.mapping(key)
        assert value is not None
        return Fields(self.path, value, f"{self.prefix}{key}.")


def is_nighthawk(doc: dict[str, Any]) -> bool:
    """nighthawk's fortio output: a "Nighthawk" label, or a zero-width first bucket at 0 %."""
    labels = doc.get("Labels")
    if isinstance(labels, str) and NIGHTHAWK_LABEL in labels.split():
        return True
    hist = doc.get("DurationHistogram")
    data = hist.get("Data") if isinstance(hist, dict) else None
    if isinstance(data, list) and data and isinstance(data[0], dict):
        first = data[0]
        return first.get("Percent") in (0, "0") and first.get("Start") == first.get("End")
    return False


def _requested_rps(f: Fields) -> float | None:
    """RequestedQPS: a number, a numeric string or "max" (None: as fast as possible)."""
    value = f.obj.get("RequestedQPS")
    if value is None:
        raise f.error("RequestedQPS", "missing")
    if isinstance(value, str) and value.strip().lower() == "max":
        return None
    rps = f.number("RequestedQPS")
    return rps if rps > 0 else None  # fortio: qps <= 0 means max speed


def _start(f: Fields) -> datetime | None:
    text = f.string("StartTime")
    if text is None:
        return None
    try:
        stamp = pd.Timestamp(text)
    except ValueError:
        stamp = pd.NaT
    if pd.isna(stamp):
        raise f.error("StartTime", f"not a timestamp: {text!r:.60}")
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize("UTC")
    return stamp.floor("us").to_pydatetime()  # datetime keeps µs; fortio writes ns


def _histogram(path: Path, hist: dict[str, Any]) -> Histogram:
    if not hist.get("Data"):
        raise ResultFileError(path, "DurationHistogram.Data", "empty histogram (no buckets)")
    if not isinstance(hist["Data"], list):
        raise ResultFileError(path, "DurationHistogram.Data", "expected a list of buckets")
    try:
        histogram = Histogram.from_fortio_data(hist)
    except ValueError as exc:
        raise ResultFileError(path, "DurationHistogram.Data", str(exc)) from None
    return histogram


def _percentiles(f: Fields, nighthawk: bool) -> dict[str, float]:
    """fortio's own percentiles in ms, keyed "p50", "p999", ..."""
    entries = f.obj.get("Percentiles") or []
    if not isinstance(entries, list):
        raise f.error("Percentiles", "expected a list")
    pairs = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise f.error(f"Percentiles[{i}]", "expected an object")
        item = Fields(f.path, entry, f"{f.prefix}Percentiles[{i}].")
        pairs.append((item.number("Percentile"), item.number("Value")))
    if nighthawk and pairs and all(p <= 1 for p, _ in pairs):
        pairs = [(p * 100, v) for p, v in pairs]  # old nighthawk wrote fractions (0.5 for p50)
    return {percentile_key(p): 1000.0 * v for p, v in pairs}


def _status_counts(f: Fields, nighthawk: bool, histogram_count: float) -> dict[str, int]:
    codes = f.mapping("RetCodes", required=False)
    if codes is None:
        return {}
    item = Fields(f.path, codes, "RetCodes.")
    counts = {str(code): round(item.number(str(code))) for code in codes}
    if nighthawk:
        # nighthawk lists only the 2xx count under "200"; like fortio's UI, count the remainder of
        # the histogram's responses as errors.
        rest = round(histogram_count) - sum(counts.values())
        if rest > 0:
            counts["non-2xx"] = rest
    return counts


def _duration_s(f: Fields, nighthawk: bool) -> float:
    value = f.number("ActualDuration")
    if value <= 0:
        raise f.error("ActualDuration", f"must be > 0 (got {value:g})")
    if nighthawk and value < NIGHTHAWK_SECONDS_BELOW:
        return value
    return value / 1e9


def read_fortio(path: str | Path) -> LoadResult:
    """A fortio or nighthawk (fortio-format) JSON result: histogram, fortio's percentiles, metadata."""
    path = Path(path)
    doc = load_json(path)
    if not isinstance(doc, dict):
        raise ResultFileError(path, "JSON", f"expected an object at the top, got {type(doc).__name__}")
    f = Fields(path, doc)
    if "DurationHistogram" not in doc:
        version = doc.get("Version")
        raise f.error(
            "DurationHistogram",
            f"missing: not a fortio result shape this reader knows (Version {version!r})",
        )
    nighthawk = is_nighthawk(doc)
    hist_fields = f.child("DurationHistogram")
    histogram = _histogram(path, hist_fields.obj)
    declared = hist_fields.optional_number("Count")
    if declared is not None and abs(declared - histogram.count) > 0.5:
        raise hist_fields.error("Count", f"{declared:g}, but the Data buckets hold {histogram.count:g}")
    rps = _requested_rps(f)
    duration = _duration_s(f, nighthawk)
    connections = f.optional_number("NumThreads")
    start = _start(f)
    meta: dict[str, Any] = {
        "generator": "nighthawk" if nighthawk else "fortio",
        "generator_version": f.string("Version"),
        "model": "open" if rps is not None else "closed",
        "rps": rps,
        "actual_rps": f.optional_number("ActualQPS"),
        "connections": round(connections) if connections is not None else None,
        "duration_s": duration,
        "start": start,
        "end": start + timedelta(seconds=duration) if start is not None else None,
        "labels": f.string("Labels"),
        "target": f.string("URL"),
        "run_type": f.string("RunType"),
        "requested_duration": f.string("RequestedDuration"),
        "status_counts": _status_counts(f, nighthawk, histogram.count),
        "percentiles_ms": _percentiles(hist_fields, nighthawk),
        "source_file": str(path),
    }
    for key, name in (("Jitter", "jitter"), ("Uniform", "uniform"), ("NoCatchUp", "no_catch_up")):
        if isinstance(doc.get(key), bool):
            meta[name] = doc[key]
    errors_hist = doc.get("ErrorsDurationHistogram")
    if isinstance(errors_hist, dict):  # current fortio: the failed calls' durations
        errors = Fields(path, errors_hist, "ErrorsDurationHistogram.")
        meta["errors_histogram_count"] = errors.optional_number("Count")
    return LoadResult.from_histogram(meta, histogram)
