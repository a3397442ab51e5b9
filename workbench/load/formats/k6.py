"""k6 result files as LoadResults: per-request CSV, JSON lines, and the end-of-test summary.

- ``--out csv`` (gzipped or plain): the workbench's own runs (custom Trend ``workbench_req``) go
  through :func:`workbench.load.k6.parse_samples` — measured scenario only, versions from the tags;
  any other k6 CSV gives one sample per ``http_req_duration`` row. Timestamps may be unix seconds
  (k6's default, so 1 s resolution), ms, µs, ns or RFC 3339 (``K6_CSV_TIME_FORMAT``).
- ``--out json``: one JSON object per line; ``Point`` lines of ``workbench_req`` (if any) or
  ``http_req_duration`` become samples.
- ``--summary-export`` or ``handleSummary``'s data: aggregates only, no histogram. k6 reports the
  trend statistics in ``summaryTrendStats`` (default avg, min, med, max, p(90), p(95)); those become
  ``meta["percentiles_ms"]``/``meta["stats_ms"]``, the standard percentiles it lacks are listed in
  ``meta["percentiles_missing"]`` and come out of ``summary()`` as NaN. Errors are k6's
  ``http_req_failed`` count (by default non-2xx/3xx, the workbench's definition too).

k6 files do not record the executor, so ``model`` and ``rps`` are None; ``connections`` is the
largest ``vus_max``.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote

import numpy as np
import pandas as pd

from workbench.load.formats.fortio import Fields, load_json, percentile_key
from workbench.load.k6 import METRIC, START_METRIC, parse_samples
from workbench.load.results import QUANTILES, LoadResult, ResultFileError, sample_meta

__all__ = ["head_text", "read_k6", "sniff_k6"]

HEAD_BYTES = 65536
GZIP_MAGIC = b"\x1f\x8b"
REQUIRED_CSV_COLUMNS = ("metric_name", "timestamp", "metric_value")
DURATION_METRIC = "http_req_duration"
_TREND_STAT = re.compile(r"^p\((\d+(?:\.\d+)?)\)$")


def is_gzip(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(2) == GZIP_MAGIC


@contextmanager
def open_text(path: Path) -> Iterator[IO[str]]:
    """The file as text, gunzipped when it is gzip (whatever its name)."""
    try:
        gz = is_gzip(path)
    except FileNotFoundError:
        raise ResultFileError(path, "file", "no such file") from None
    except OSError as exc:
        raise ResultFileError(path, "file", f"cannot read ({exc})") from None
    opener: Any = gzip.open if gz else open
    with opener(path, "rb") as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as text:
        yield text


def head_text(path: Path, size: int = HEAD_BYTES) -> str:
    """The first ``size`` characters (decompressed); ResultFileError if unreadable."""
    try:
        with open_text(path) as fh:
            return fh.read(size)
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise ResultFileError(path, "file", f"cannot read ({exc})") from None


def sniff_k6(head: str) -> str | None:
    """ "csv", "json" (``--out json`` lines) or "summary" from a file's head; None if not k6."""
    text = head.lstrip()
    if text.startswith("metric_name,"):
        return "csv"
    if not text.startswith("{"):
        return None
    first = text.split("\n", 1)[0]
    if re.search(r'"type"\s*:\s*"(Point|Metric)"', first):
        return "json"
    if re.search(r'"metrics"\s*:', text) and re.search(r'"(root_group|state|http_req_duration)"', text):
        return "summary"
    return None


# -- shared ------------------------------------------------------------------------------------------


def _meta(path: Path, samples: pd.DataFrame, start: datetime | None, end: datetime | None) -> dict[str, Any]:
    """Metadata common to the per-request k6 files."""
    duration = (end - start).total_seconds() if start is not None and end is not None else None
    duration = duration if duration and duration > 0 else None
    return sample_meta("k6", path, samples, start, end, duration)


def _frame(
    times: pd.Series, values: pd.Series, status: pd.Series, versions: pd.Series | None = None
) -> pd.DataFrame:
    n = len(values)
    return pd.DataFrame(
        {
            "timestamp": times.reset_index(drop=True).dt.as_unit("ns"),
            "latency_ms": values.astype(float).reset_index(drop=True),
            "status": pd.to_numeric(status, errors="coerce").fillna(0).astype("int64").reset_index(drop=True),
            "variant": (versions if versions is not None else pd.Series([""] * n))
            .astype(str)
            .reset_index(drop=True),
        }
    )


def _to_utc(path: Path, column: str, raw: pd.Series) -> pd.Series:
    """k6 timestamps (unix s/ms/µs/ns by magnitude, or RFC 3339) as UTC datetimes."""
    numbers = pd.to_numeric(raw, errors="coerce")
    if len(raw) and numbers.notna().all():
        scale = float(numbers.abs().median())
        unit = "s" if scale < 1e11 else "ms" if scale < 1e14 else "us" if scale < 1e17 else "ns"
        return pd.to_datetime(numbers, unit=unit, utc=True)
    try:
        return pd.to_datetime(raw, utc=True, format="ISO8601")
    except (ValueError, TypeError) as exc:
        raise ResultFileError(path, column, f"not timestamps ({exc})") from None


def _py(stamp: pd.Timestamp) -> datetime:
    """A datetime for the metadata (µs: datetime has no ns)."""
    return stamp.floor("us").to_pydatetime()


def _version_tag(extra: str) -> str:
    tags = dict(part.split("=", 1) for part in str(extra).split("&") if "=" in part)
    return unquote(tags.get("version", ""))


# -- CSV ---------------------------------------------------------------------------------------------


def _csv_columns(path: Path) -> list[str]:
    with open_text(path) as fh:
        header = fh.readline().strip()
    columns = header.split(",")
    missing = [c for c in REQUIRED_CSV_COLUMNS if c not in columns]
    if missing:
        raise ResultFileError(path, "columns", f"missing required columns {', '.join(missing)}")
    return columns


def _last_line(path: Path) -> str:
    """The last non-empty line of an uncompressed file (reads only its tail)."""
    with path.open("rb") as fh:
        fh.seek(0, 2)
        fh.seek(max(0, fh.tell() - HEAD_BYTES))
        lines = fh.read().decode("utf-8", errors="replace").splitlines()
    return next((line for line in reversed(lines) if line.strip()), "")


def _check_complete(path: Path, columns: list[str]) -> None:
    """A cut-off last line is an error: gzip notices it when read, a plain file by a short row."""
    if is_gzip(path):
        return
    last = _last_line(path)
    if len(last.split(",")) < len(columns):
        raise ResultFileError(path, "last line", f"truncated row (fewer fields than the header): {last:.60}")


def _read_csv(path: Path, wanted: list[str]) -> pd.DataFrame:
    """The ``wanted`` columns, as strings."""
    try:
        return pd.read_csv(
            path,
            usecols=wanted,
            dtype=str,
            keep_default_na=False,
            compression="gzip" if is_gzip(path) else None,
        )
    except (ValueError, pd.errors.ParserError, OSError, EOFError) as exc:
        raise ResultFileError(path, "CSV", f"cannot parse ({exc})") from None


def _numbers(path: Path, column: str, raw: pd.Series) -> pd.Series:
    values = pd.to_numeric(raw, errors="coerce")
    bad = values.isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ResultFileError(path, column, f"not a number in data row {row + 1}: {raw.iloc[row]!r:.40}")
    return values


def _vus_max(frame: pd.DataFrame, path: Path) -> int | None:
    rows = frame.loc[frame["metric_name"] == "vus_max", "metric_value"]
    return int(_numbers(path, "metric_value", rows).max()) if len(rows) else None


def _read_plain_csv(path: Path, columns: list[str]) -> LoadResult:
    df = _read_csv(path, [c for c in (*REQUIRED_CSV_COLUMNS, "status", "extra_tags") if c in columns])
    rows = df.loc[df["metric_name"] == DURATION_METRIC]
    if not len(rows):
        raise ResultFileError(path, "metric_name", f"no {DURATION_METRIC} rows (nor {METRIC})")
    times = _to_utc(path, "timestamp", rows["timestamp"])
    versions = rows["extra_tags"].map(_version_tag) if "extra_tags" in rows else None
    status = rows["status"] if "status" in rows else pd.Series(["0"] * len(rows))
    samples = _frame(times, _numbers(path, "metric_value", rows["metric_value"]), status, versions)
    all_times = _to_utc(path, "timestamp", df["timestamp"])
    meta = _meta(path, samples, _py(all_times.min()), _py(all_times.max()))
    meta["connections"] = _vus_max(df, path)
    dropped = df.loc[df["metric_name"] == "dropped_iterations", "metric_value"]
    meta["dropped_iterations"] = int(_numbers(path, "metric_value", dropped).sum())
    return LoadResult(meta, samples)


def _read_workbench_csv(path: Path) -> LoadResult:
    """The workbench's own k6 CSV, through the run code's parser (which wants gzip)."""
    with tempfile.TemporaryDirectory() as tmp:
        source = path
        if not is_gzip(path):
            source = Path(tmp) / "samples.csv.gz"
            with path.open("rb") as src, gzip.open(source, "wb", compresslevel=1) as dst:
                shutil.copyfileobj(src, dst)
        try:
            samples, dropped, start = parse_samples(source)
        except (ValueError, KeyError, pd.errors.ParserError, OSError, EOFError) as exc:
            raise ResultFileError(path, "CSV", f"cannot parse the workbench k6 samples ({exc})") from None
    end = _py(samples["timestamp"].max()) if len(samples) else None
    if start is None and len(samples):
        start = _py(samples["timestamp"].min())
    meta = _meta(path, samples, start, end)
    meta["connections"] = _vus_max(_read_csv(path, ["metric_name", "metric_value"]), path)
    meta["dropped_iterations"] = dropped
    return LoadResult(meta, samples)


# -- JSON lines --------------------------------------------------------------------------------------


_JSON_METRICS = (DURATION_METRIC, METRIC, "vus_max", "dropped_iterations", START_METRIC)


def _points(path: Path) -> dict[str, list[tuple[int, dict[str, Any]]]]:
    """``Point`` data by metric, for the metrics this reader uses, with their line numbers."""
    found: dict[str, list[tuple[int, dict[str, Any]]]] = {m: [] for m in _JSON_METRICS}
    with open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            text = line.strip()
            if not text:
                continue
            if not text.endswith("}"):
                raise ResultFileError(path, f"line {lineno}", "truncated JSON line")
            if '"Point"' not in text or not any(f'"{m}"' in text for m in _JSON_METRICS):
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ResultFileError(path, f"line {lineno}", f"invalid JSON ({exc.msg})") from None
            if not isinstance(obj, dict) or obj.get("type") != "Point" or obj.get("metric") not in found:
                continue
            data = obj.get("data")
            if not isinstance(data, dict):
                raise ResultFileError(path, f"line {lineno}: data", "expected an object")
            found[obj["metric"]].append((lineno, data))
    return found


def _point_values(path: Path, points: list[tuple[int, dict[str, Any]]]) -> list[float]:
    values = []
    for lineno, data in points:
        value = data.get("value")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ResultFileError(path, f"line {lineno}: data.value", f"expected a number, got {value!r:.40}")
        values.append(float(value))
    return values


def _read_json_lines(path: Path) -> LoadResult:
    points = _points(path)
    if not points[METRIC] and not points[DURATION_METRIC]:
        raise ResultFileError(path, "metric", f"no {DURATION_METRIC} (nor {METRIC}) points")
    metric = METRIC if points[METRIC] else DURATION_METRIC
    chosen = points[metric]
    tags = [data.get("tags") or {} for _, data in chosen]
    if metric == METRIC and any(t.get("scenario") == "measure" for t in tags):
        keep = [t.get("scenario") == "measure" for t in tags]
        chosen = [p for p, k in zip(chosen, keep, strict=True) if k]
        tags = [t for t, k in zip(tags, keep, strict=True) if k]
    values = _point_values(path, chosen)
    times = _to_utc(path, "data.time", pd.Series([data.get("time") for _, data in chosen], dtype=object))
    status = pd.Series([t.get("status", "0") or "0" for t in tags], dtype=object)
    versions = pd.Series([unquote(str(t.get("version", ""))) for t in tags], dtype=object)
    samples = _frame(times, pd.Series(values, dtype=float), status, versions)
    measure = [p for p in points[START_METRIC] if (p[1].get("tags") or {}).get("scenario") == "measure"]
    if metric == METRIC:  # the measured phase: from k6 starting that scenario to its last response
        first = (
            pd.Timestamp(min(_point_values(path, measure)), unit="ms", tz="UTC") if measure else times.min()
        )
        start, end = _py(first), _py(times.max())
    else:  # the whole test: every point read (vus_max comes each second)
        every = [data.get("time") for found in points.values() for _, data in found]
        span = _to_utc(path, "data.time", pd.Series(every, dtype=object))
        start, end = _py(span.min()), _py(span.max())
    meta = _meta(path, samples, start, end)
    vus = _point_values(path, points["vus_max"])
    meta["connections"] = int(max(vus)) if vus else None
    meta["dropped_iterations"] = int(sum(_point_values(path, points["dropped_iterations"])))
    return LoadResult(meta, samples)


# -- end-of-test summary -----------------------------------------------------------------------------


def _metric_values(f: Fields, name: str, *, required: bool = False) -> Fields | None:
    """A metric's statistics, from ``--summary-export`` (flat) or ``handleSummary`` (``values``)."""
    metric = f.mapping(name, required=required)
    if metric is None:
        return None
    if "values" in metric:
        return Fields(f.path, metric, f"{f.prefix}{name}.").child("values")
    return Fields(f.path, metric, f"{f.prefix}{name}.")


def _trend(values: Fields) -> tuple[dict[str, float], dict[str, float]]:
    """(percentiles_ms, stats_ms) from a trend's statistics."""
    percentiles: dict[str, float] = {}
    stats: dict[str, float] = {}
    for key in values.obj:
        if key == "thresholds":
            continue
        match = _TREND_STAT.match(key)
        if match:
            percentiles[percentile_key(float(match.group(1)))] = values.number(key)
        elif key in ("med", "min", "max", "avg"):
            number = values.number(key)
            if key == "med":
                percentiles["p50"] = number
            else:
                stats["mean" if key == "avg" else key] = number
    return percentiles, stats


def _read_summary(path: Path) -> LoadResult:
    doc = load_json(path)
    if not isinstance(doc, dict):
        raise ResultFileError(path, "JSON", f"expected an object at the top, got {type(doc).__name__}")
    metrics = Fields(path, doc).child("metrics")
    duration_values = _metric_values(metrics, DURATION_METRIC, required=True)
    assert duration_values is not None
    percentiles, stats = _trend(duration_values)
    reqs = _metric_values(metrics, "http_reqs")
    count = reqs.optional_number("count") if reqs else None
    rate = reqs.optional_number("rate") if reqs else None
    state = doc.get("state") if isinstance(doc.get("state"), dict) else {}
    run_ms = Fields(path, state, "state.").optional_number("testRunDurationMs")
    duration = run_ms / 1000 if run_ms else (count / rate if count and rate else None)
    failed = _metric_values(metrics, "http_req_failed")
    vus = _metric_values(metrics, "vus_max")
    vus_max = (vus.optional_number("max") or vus.optional_number("value")) if vus else None
    meta: dict[str, Any] = {
        "generator": "k6",
        "generator_version": None,
        "model": None,
        "rps": None,
        "actual_rps": rate,
        "connections": round(vus_max) if vus_max else None,
        "duration_s": duration,
        "start": None,
        "labels": None,
        "target": None,
        "status_counts": None,
        "error_count": failed.optional_number("passes") if failed else None,  # k6 Rate: passes = true
        "requests_total": round(count) if count is not None else None,
        "percentiles_ms": percentiles,
        "percentiles_missing": [k for k in QUANTILES if k not in percentiles],
        "stats_ms": stats,
        "source_file": str(path),
    }
    return LoadResult.from_histogram(meta, None)


def read_k6(path: str | Path) -> LoadResult:
    """Any k6 result file: ``--out csv`` (gz or plain), ``--out json``, or the summary JSON."""
    path = Path(path)
    head = head_text(path)
    if not head.strip():
        raise ResultFileError(path, "file", "empty file")
    kind = sniff_k6(head)
    if kind == "csv":
        columns = _csv_columns(path)
        _check_complete(path, columns)
        if f"\n{METRIC}," in head:
            return _read_workbench_csv(path)
        return _read_plain_csv(path, columns)
    if kind == "json":
        return _read_json_lines(path)
    if kind == "summary":
        return _read_summary(path)
    raise ResultFileError(path, "format", "not a k6 CSV, JSON-lines or summary file")
