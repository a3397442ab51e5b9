"""LoadResult storage: Parquet + JSON, read back exactly."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO
from workbench.load import storage
from workbench.load.formats import read_fortio
from workbench.load.results import LoadResult, ResultFileError, empty_samples
from workbench.metrics.histogram import Histogram

DATA = REPO / "tests" / "data" / "formats"


def _samples() -> pd.DataFrame:
    stamps = pd.to_datetime(
        [1_700_000_000_123_456_789, 1_700_000_001_000_000_001, 1_700_000_002_500_000_000], utc=True
    )
    return pd.DataFrame(
        {
            "timestamp": stamps,
            "latency_ms": [1.25, 2.5, float("nan")],
            "status": np.array([200, 503, 0], dtype="int64"),
            "variant": pd.Series(["v1", "v2", ""], dtype="str"),
            "tagged": [True, False, True],
            "sent": stamps.tz_convert("Europe/Berlin"),
            "route": pd.Categorical(["a", "b", "a"]),
            "note": pd.Series(["x", None, "z"], dtype=object),
        },
        index=pd.RangeIndex(10, 13),
    )


META = {
    "generator": "k6",
    "rps": None,
    "connections": 4,
    "duration_s": 2.5,
    "start": datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC),
    "offset_start": datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2))),
    "naive": datetime(2024, 5, 1, 12, 0),
    "stamp": pd.Timestamp("2024-05-01T12:00:00.000000001", tz="UTC"),
    "day": date(2024, 5, 1),
    "warmup": timedelta(seconds=1, microseconds=5),
    "looks_like_a_date": "2024-05-01T12:00:00+00:00",
    "source_file": Path("/tmp/results.csv"),
    "versions": ("v1", "v2"),
    "status_counts": {"200": 2, "503": 1},
    "by_code": {200: 2, 503: 1},
    "tricky": {"__datetime__": "not a tag"},
    "limits": [float("inf"), -float("inf"), 1e-300],
    "np_value": np.float64(0.1),
    "nested": {"labels": {"mode": "both"}, "list": [1, "two", None, True]},
}


def test_round_trip_is_exact(tmp_path: Path) -> None:
    result = LoadResult(dict(META), _samples())
    path = storage.save(result, tmp_path / "run-1", "point-a")
    assert path == tmp_path / "run-1" / "point-a.json" and (tmp_path / "run-1" / "point-a.parquet").is_file()
    back = storage.load(path)
    pd.testing.assert_frame_equal(back.samples, result.samples, check_exact=True)
    assert back.meta == result.meta
    assert type(back.meta["stamp"]) is pd.Timestamp and back.meta["stamp"].nanosecond == 1
    assert back.meta["looks_like_a_date"] == META["looks_like_a_date"]  # strings stay strings
    assert back.meta["versions"] == ("v1", "v2") and back.meta["by_code"] == {200: 2, 503: 1}
    assert back.histogram is None
    assert storage.load(tmp_path / "run-1" / "point-a.parquet").meta == result.meta
    assert storage.load(tmp_path / "run-1" / "point-a").meta == result.meta


def test_nan_in_meta_survives(tmp_path: Path) -> None:
    back = storage.load(storage.save(LoadResult({"p99": float("nan")}, empty_samples()), tmp_path, "n"))
    assert math.isnan(back.meta["p99"])


def test_histogram_only_result_round_trip(tmp_path: Path) -> None:
    result = read_fortio(DATA / "fortio-current.json")
    back = storage.load(storage.save(result, tmp_path, "fortio"))
    pd.testing.assert_frame_equal(back.samples, result.samples)
    assert back.histogram == result.histogram and back.meta == result.meta
    assert back.summary() == result.summary()
    prom = Histogram.from_prometheus_buckets([0.005, 0.01, "+Inf"], [3, 7, 8])
    open_ended = LoadResult.from_histogram({"generator": "prometheus"}, prom)
    again = storage.load(storage.save(open_ended, tmp_path, "prom"))
    assert again.histogram == prom and math.isinf(again.histogram.upper[-1])


def test_list_results_and_overwrite(tmp_path: Path) -> None:
    result = LoadResult({"n": 1}, _samples())
    storage.save(result, tmp_path, "b")
    storage.save(result, tmp_path, "a")
    storage.save(LoadResult({"n": 2}, _samples()), tmp_path, "a")  # replaces
    (tmp_path / "notes.json").write_text('{"hello": 1}')
    (tmp_path / "broken.json").write_text("{")
    assert storage.list_results(tmp_path) == [tmp_path / "a.json", tmp_path / "b.json"]
    assert storage.load(tmp_path / "a.json").meta == {"n": 2}
    assert not list(tmp_path.glob(".*"))  # no temporary files left


def test_refusals(tmp_path: Path) -> None:
    result = LoadResult({"n": 1}, _samples())
    with pytest.raises(ValueError, match="plain file name"):
        storage.save(result, tmp_path, "../escape")
    with pytest.raises(TypeError, match=r"meta\.bad: cannot store a object"):
        storage.save(LoadResult({"bad": object()}, _samples()), tmp_path, "x")
    (tmp_path / "notes.json").write_text('{"hello": 1}')
    with pytest.raises(ResultFileError, match=r"notes\.json: format: not a stored load result"):
        storage.load(tmp_path / "notes.json")
    with pytest.raises(ResultFileError, match="no such file"):
        storage.load(tmp_path / "missing.json")
