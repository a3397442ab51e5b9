"""Result-file readers: real fortio 1.3.1 fixtures (Istio 1.2), hand-made samples, bad files, ``ingest``."""

from __future__ import annotations

import functools
import gzip
import json
import math
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from conftest import REPO, run_workbench
from workbench.load.formats import ResultFileError, detect, read_any, read_fortio, read_hey, read_k6
from workbench.load.k6 import parse_samples
from workbench.load.results import LoadResult, is_error_status
from workbench.metrics.histogram import Histogram

DATA = REPO / "tests" / "data" / "formats"
FIXTURES = "fixtures/istio-1.2-fortio"
STANDARD = ("p50", "p75", "p90", "p99", "p999")


# -- Istio 1.2 fortio fixtures -------------------------------------------------------------------------


@functools.cache
def _fixture_runs(directory: Path) -> list[tuple[Path, dict[str, Any], LoadResult]]:
    return [(p, json.loads(p.read_text()), read_fortio(p)) for p in sorted(directory.glob("2019-*.json"))]


@functools.cache
def _compiled(directory: Path) -> dict[str, dict[str, Any]]:
    lines = (directory / "compiled-results.json").read_text().splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    return {row["Labels"]: row for row in rows}


@pytest.fixture
def runs(shared: Path) -> list[tuple[Path, dict[str, Any], LoadResult]]:
    found = _fixture_runs(shared / FIXTURES)
    assert len(found) == 21  # 7 connection counts x base/serveronly/both
    return found


def _truncated_us(ms: float, compiled: int) -> bool:
    """compiled-results.json holds int(seconds * 1e6): truncated, not rounded, microseconds."""
    return -1e-6 <= ms * 1000 - compiled < 1


def test_fortio_fixtures_reproduce_their_percentiles_and_the_compiled_results(
    runs: list[tuple[Path, dict[str, Any], LoadResult]], shared: Path
) -> None:
    compiled = _compiled(shared / FIXTURES)
    for path, doc, result in runs:
        hist = doc["DurationHistogram"]
        s = result.summary()
        own = {p["Percentile"]: 1000 * p["Value"] for p in hist["Percentiles"]}
        for key, pct in zip(STANDARD, (50, 75, 90, 99, 99.9), strict=True):
            assert s[key] == pytest.approx(own[pct], abs=1e-3), (path.name, key)  # to 1 µs
        row = compiled[doc["Labels"]]
        for key in (*STANDARD, "min", "max"):
            assert _truncated_us(s[key], row[key]), (path.name, key, s[key], row[key])
        assert s["count"] == hist["Count"] == sum(doc["RetCodes"].values())
        assert s["error_pct"] == 0 == row["errorPercent"]
        assert s["mean"] == pytest.approx(1000 * hist["Avg"])
        assert s["actual_rps"] == pytest.approx(doc["ActualQPS"])


def test_fortio_fixture_metadata(runs: list[tuple[Path, dict[str, Any], LoadResult]]) -> None:
    for path, doc, result in runs:
        meta = result.meta
        assert meta["generator"] == "fortio" and meta["generator_version"] == "1.3.1"
        assert meta["model"] == "open" and meta["rps"] == 1000.0
        assert meta["connections"] == doc["NumThreads"] and meta["labels"] == doc["Labels"]
        assert meta["duration_s"] == pytest.approx(240, abs=0.05) and meta["target"] == doc["URL"]
        assert meta["start"] == pd.Timestamp(doc["StartTime"]).floor("us").to_pydatetime()
        assert meta["source_file"] == str(path) and meta["status_counts"] == {"200": doc["RetCodes"]["200"]}
        assert len(result.samples) == 0 and list(result.samples.columns)[:4] == [
            "timestamp",
            "latency_ms",
            "status",
            "variant",
        ]


def test_histogram_quantiles_agree_with_fortios_percentiles_within_their_bucket(
    runs: list[tuple[Path, dict[str, Any], LoadResult]],
) -> None:
    for path, doc, result in runs:
        hist = result.histogram
        assert hist is not None and hist.count == doc["DurationHistogram"]["Count"]
        for entry in doc["DurationHistogram"]["Percentiles"]:
            value = 1000 * entry["Value"]
            lower, upper = hist.bucket_of(value)
            estimate = hist.quantile(entry["Percentile"] / 100)
            assert abs(estimate - value) <= upper - lower, (path.name, entry)
            assert estimate == pytest.approx(value, abs=1e-9)  # same interpolation as fortio's


def test_the_published_table_by_mode_and_connections(
    runs: list[tuple[Path, dict[str, Any], LoadResult]],
) -> None:
    rows = []
    for path, _, result in runs:
        s = result.summary()
        mode = path.stem.rsplit("_", 1)[1]
        us = {key: int(s[key] * 1000 + 1e-6) for key in ("p50", "p90", "p99")}
        rows.append({"mode": mode, "connections": result.meta["connections"], **us})
    table = pd.DataFrame(rows).set_index(["connections", "mode"]).sort_index()
    assert table.index.get_level_values("connections").unique().tolist() == [1, 2, 4, 8, 16, 32, 64]
    assert set(table.index.get_level_values("mode")) == {"base", "serveronly", "both"}
    assert table.loc[(16, "base")].tolist() == [629, 781, 1243]
    assert table.loc[(16, "both")].tolist() == [4380, 8764, 12283]
    # sidecars on both ends cost most at every load level
    by_mode = table["p50"].unstack("mode")
    assert (by_mode["base"] < by_mode["serveronly"]).all() and (by_mode["serveronly"] < by_mode["both"]).all()


# -- current fortio and nighthawk ----------------------------------------------------------------------


def _variant(tmp_path: Path, source: str, change: dict[str, Any]) -> Path:
    doc = json.loads((DATA / source).read_text())
    doc.update(change)
    path = tmp_path / source
    path.write_text(json.dumps(doc))
    return path


def test_current_fortio() -> None:
    result = read_fortio(DATA / "fortio-current.json")
    meta, s = result.meta, result.summary()
    assert meta["generator"] == "fortio" and meta["generator_version"] == "1.63.1"
    assert (meta["model"], meta["rps"], meta["connections"], meta["duration_s"]) == ("open", 2.0, 2, 5.0)
    assert meta["start"] == datetime(2024, 3, 5, 10, 15, 0, 123456, tzinfo=UTC)
    assert meta["labels"] == "local demo v2" and meta["target"] == "http://127.0.0.1:8080/echo?size=128"
    assert meta["status_counts"] == {"-1": 1, "200": 8, "503": 1}
    assert (meta["jitter"], meta["uniform"], meta["no_catch_up"]) == (False, True, False)
    assert meta["errors_histogram_count"] == 2
    assert meta["percentiles_ms"] == pytest.approx({"p50": 1.4, "p90": 3.6, "p99": 4.14})
    # p50/p90/p99 as fortio reported them; p75 and p99.9 (not requested from fortio) interpolated
    expected = {"p50": 1.4, "p75": 1.9, "p90": 3.6, "p99": 4.14, "p999": 3 + 1.2 * 1.99 / 2}
    assert {k: s[k] for k in expected} == pytest.approx(expected, rel=1e-12)
    assert (s["count"], s["min"], s["max"], s["actual_rps"]) == (10, 0.5, 4.2, 2.0)
    assert s["mean"] == pytest.approx(1.75)
    assert s["error_pct"] == 20.0  # -1 (socket error) and 503 of 10


@pytest.mark.parametrize(
    ("requested", "rps", "model"),
    [(2, 2.0, "open"), ("2.5", 2.5, "open"), ("max", None, "closed"), (-1, None, "closed")],
)
def test_fortio_requested_qps_forms(tmp_path: Path, requested: Any, rps: float | None, model: str) -> None:
    meta = read_fortio(_variant(tmp_path, "fortio-current.json", {"RequestedQPS": requested})).meta
    assert (meta["rps"], meta["model"]) == (rps, model)


def test_nighthawk_fortio_output() -> None:
    result = read_fortio(DATA / "nighthawk-fortio.json")
    meta, s = result.meta, result.summary()
    assert meta["generator"] == "nighthawk" and meta["generator_version"] == "0.0"
    assert (meta["rps"], meta["model"], meta["connections"], meta["duration_s"]) == (50.0, "open", 4, 10.0)
    assert meta["percentiles_ms"] == pytest.approx({"p50": 4.0, "p90": 10.0, "p99": 45.0})  # from 0.5, 0.9
    assert meta["status_counts"] == {"200": 490, "non-2xx": 8}
    assert s["count"] == 498 and s["error_pct"] == pytest.approx(100 * 8 / 498)
    assert s["p75"] == pytest.approx(4 + 6 * (373.5 - 249) / 199)  # interpolated in [4, 10] ms
    assert s["p999"] == pytest.approx(10 + 40 * (497.502 - 448) / 50)
    assert (s["min"], s["max"], s["mean"], s["actual_rps"]) == pytest.approx((2.0, 50.0, 6.2, 49.8))


def test_nighthawk_detected_by_shape_and_old_seconds_duration(tmp_path: Path) -> None:
    newer = {
        "Labels": "canary run",
        "Version": "0.25.0",
        "RequestedQPS": "50",
        "ActualDuration": 10,  # very old nighthawk wrote seconds
        "DurationHistogram": {
            **json.loads((DATA / "nighthawk-fortio.json").read_text())["DurationHistogram"],
            "Percentiles": [{"Percentile": 50, "Value": 0.004}, {"Percentile": 99.9, "Value": 0.049}],
        },
    }
    meta = read_fortio(_variant(tmp_path, "nighthawk-fortio.json", newer)).meta
    assert meta["generator"] == "nighthawk" and meta["duration_s"] == 10.0
    assert meta["percentiles_ms"] == pytest.approx({"p50": 4.0, "p999": 49.0})


# -- k6 ------------------------------------------------------------------------------------------------


def _gzip(source: Path, target: Path) -> Path:
    with source.open("rb") as src, gzip.open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return target


@pytest.mark.parametrize("compressed", [False, True])
def test_k6_plain_csv(tmp_path: Path, compressed: bool) -> None:
    path = DATA / "k6-plain.csv"
    if compressed:
        path = _gzip(path, tmp_path / "results.gz")
    result = read_k6(path)
    meta, s = result.meta, result.summary()
    assert result.samples["latency_ms"].tolist() == [10, 20, 30, 40, 100]
    assert result.samples["status"].tolist() == [200, 200, 200, 404, 200]
    assert result.samples["timestamp"].iloc[0] == pd.Timestamp(1595325560, unit="s", tz="UTC")
    assert (meta["generator"], meta["connections"], meta["dropped_iterations"]) == ("k6", 5, 2)
    assert (meta["model"], meta["rps"], meta["duration_s"]) == (None, None, 5.0)
    expected = {"count": 5, "p50": 30, "p75": 40, "p90": 76, "p99": 97.6, "max": 100, "mean": 40}
    assert {k: s[k] for k in expected} == pytest.approx(expected)
    assert (s["error_pct"], s["actual_rps"], s["dropped"]) == (0.0, 1.0, 2.0)  # a 404: not an error


def test_k6_cut_off_files(tmp_path: Path) -> None:
    packed = _gzip(DATA / "k6-plain.csv", tmp_path / "results.gz").read_bytes()
    cut = tmp_path / "cut.gz"
    cut.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(ResultFileError, match=r"cut\.gz: (file|CSV): cannot"):
        read_k6(cut)
    lines = (DATA / "k6-workbench.csv").read_text().splitlines()
    short = tmp_path / "samples.csv"
    short.write_text("\n".join([*lines[:-2], "workbench_req,1700000001900000,9.0"]) + "\n")
    with pytest.raises(ResultFileError, match="last line: truncated row"):
        read_k6(short)


@pytest.mark.parametrize("compressed", [False, True])
def test_k6_workbench_csv(tmp_path: Path, compressed: bool) -> None:
    path = DATA / "k6-workbench.csv"
    gz = _gzip(path, tmp_path / "samples.csv.gz")
    result = read_k6(gz if compressed else path)
    samples = result.samples
    assert samples["latency_ms"].tolist() == [2, 4, 6, 8]  # measured scenario only
    assert samples["variant"].tolist() == ["v1", "v2 beta", "v1", ""]
    assert samples["status"].tolist() == [200, 200, 503, 0]
    pd.testing.assert_frame_equal(samples, parse_samples(gz)[0])
    meta, s = result.meta, result.summary()
    assert meta["start"] == datetime.fromtimestamp(1700000001, tz=UTC)
    assert meta["duration_s"] == pytest.approx(0.8) and meta["connections"] == 3
    assert meta["dropped_iterations"] == 1 and meta["status_counts"] == {"0": 1, "200": 2, "503": 1}
    assert (s["count"], s["error_pct"], s["p50"], s["dropped"]) == (4, 50.0, 5.0, 1.0)
    assert s["actual_rps"] == pytest.approx(5.0)


def test_k6_json_lines() -> None:
    result = read_k6(DATA / "k6-output.json")
    samples, meta, s = result.samples, result.meta, result.summary()
    assert samples["latency_ms"].tolist() == [12.5, 7.5, 30, 50]
    assert samples["timestamp"].iloc[0] == pd.Timestamp("2024-05-01T10:00:00.1", tz="UTC")
    assert str(samples["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert (meta["connections"], meta["dropped_iterations"], meta["duration_s"]) == (4, 1, 2.0)
    assert (s["count"], s["p50"], s["max"], s["mean"], s["error_pct"]) == (4, 21.25, 50, 25, 25.0)


def test_k6_summary_export_has_no_invented_percentiles() -> None:
    result = read_k6(DATA / "k6-summary-export.json")
    meta, s = result.meta, result.summary()
    assert result.histogram is None and len(result.samples) == 0
    assert meta["percentiles_ms"] == {"p50": 110.47, "p90": 203.54, "p95": 215.95}
    assert meta["percentiles_missing"] == ["p75", "p99", "p999"]
    assert (s["p50"], s["p90"], s["min"], s["max"], s["mean"]) == (110.47, 203.54, 104.11, 1140.2, 144.56)
    assert all(math.isnan(s[k]) for k in ("p75", "p99", "p999"))
    assert (s["count"], s["actual_rps"], s["error_pct"]) == (180, 4.5, 5.0)
    assert meta["duration_s"] == 40.0 and meta["connections"] == 20


def test_k6_handle_summary_data() -> None:
    result = read_k6(DATA / "k6-handle-summary.json")
    meta, s = result.meta, result.summary()
    assert meta["percentiles_missing"] == ["p75"]
    assert (s["p50"], s["p90"], s["p99"], s["p999"]) == (18, 31, 90.5, 240)
    assert math.isnan(s["p75"])
    assert (s["count"], s["error_pct"], meta["duration_s"], meta["connections"]) == (3000, 0.0, 30.0, 8)


# -- hey -----------------------------------------------------------------------------------------------


def test_hey_csv() -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    result = read_hey(DATA / "hey.csv", start=start)
    samples, meta, s = result.samples, result.meta, result.summary()
    assert samples["latency_ms"].tolist() == pytest.approx([12, 8, 25, 10, 15])
    assert samples["status"].tolist() == [200, 200, 502, 200, 200]
    assert samples["timestamp"].iloc[0] == pd.Timestamp("2024-01-01T00:00:00.013", tz="UTC")  # 1 ms + 12 ms
    assert meta["duration_s"] == pytest.approx(0.105) and meta["start_estimated"] is False
    assert (s["count"], s["p50"], s["max"], s["mean"], s["error_pct"]) == pytest.approx((5, 12, 25, 14, 20))
    assert s["actual_rps"] == pytest.approx(5 / 0.105)
    assert read_hey(DATA / "hey.csv").meta["start_estimated"] is True


# -- dispatch and bad files ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "generator"),
    [
        ("fortio-current.json", "fortio"),
        ("nighthawk-fortio.json", "nighthawk"),
        ("k6-plain.csv", "k6"),
        ("k6-workbench.csv", "k6"),
        ("k6-output.json", "k6"),
        ("k6-summary-export.json", "k6"),
        ("k6-handle-summary.json", "k6"),
        ("hey.csv", "hey"),
    ],
)
def test_read_any_picks_the_reader_by_content(tmp_path: Path, name: str, generator: str) -> None:
    disguised = tmp_path / "result.dat"  # the name says nothing
    shutil.copy(DATA / name, disguised)
    assert read_any(disguised).meta["generator"] == generator


BAD = [
    ("fortio-truncated.json", read_fortio, "JSON", "truncated JSON"),
    ("fortio-empty-histogram.json", read_fortio, "DurationHistogram.Data", "empty histogram (no buckets)"),
    ("fortio-wrong-type.json", read_fortio, "ActualDuration", "expected a number, got 'four minutes'"),
    (
        "fortio-wrong-bucket.json",
        read_fortio,
        "DurationHistogram.Data",
        "bucket 3: Count: expected a number, got 'many'",
    ),
    ("fortio-unknown-shape.json", read_fortio, "DurationHistogram", "not a fortio result shape"),
    ("k6-missing-columns.csv", read_k6, "columns", "missing required columns metric_value"),
    ("k6-truncated.json", read_k6, "line 6", "truncated JSON line"),
    ("k6-truncated.csv", read_k6, "last line", "truncated row"),
    ("k6-summary-wrong-type.json", read_k6, "metrics.http_req_duration.p(90)", "expected a number"),
    ("hey-missing-columns.csv", read_hey, "columns", "missing required columns offset"),
    ("hey-wrong-type.csv", read_hey, "status-code", "not a number in data row 2"),
    ("unknown.txt", read_any, "format", "unrecognised result file"),
    ("empty.json", read_any, "file", "empty file"),
    ("no-such-file.json", read_any, "file", "no such file"),
]


@pytest.mark.parametrize(("name", "reader", "field", "problem"), BAD, ids=[b[0] for b in BAD])
def test_bad_files_raise_one_error_naming_file_and_field(
    name: str, reader: Any, field: str, problem: str
) -> None:
    path = DATA / name
    for read in (reader, read_any):
        with pytest.raises(ResultFileError) as caught:
            read(path)
        message = str(caught.value)
        assert isinstance(caught.value, ValueError)
        assert message.startswith(f"{path}: {field}: ") and problem in message, message
        assert "\n" not in message


def test_error_message_shape(tmp_path: Path) -> None:
    path = tmp_path / "results" / "x.json"
    path.parent.mkdir()
    shutil.copy(DATA / "fortio-empty-histogram.json", path)
    with pytest.raises(ResultFileError, match=r"^") as caught:
        read_any(path)
    assert str(caught.value) == f"{path}: DurationHistogram.Data: empty histogram (no buckets)"
    assert detect(DATA / "nighthawk-fortio.json") == "fortio"


def test_error_definition() -> None:
    errors = {code: is_error_status(code) for code in (200, "204", "302", "404", "503", "0", "-1", 199)}
    assert errors == {
        200: False,
        "204": False,
        "302": False,
        "404": False,
        "503": True,
        "0": True,
        "-1": True,
        199: False,
    }
    assert not is_error_status("SERVING") and is_error_status("NOT_SERVING") and is_error_status("non-2xx")
    meta = {"status_counts": {"200": 6, "301": 1, "403": 2, "-1": 1}}
    assert LoadResult.from_histogram(meta, None).summary()["error_pct"] == 10.0


def test_prometheus_histogram_result_summary() -> None:
    hist = Histogram.from_prometheus_buckets([0.005, 0.01, 0.025, "+Inf"], [40, 90, 99, 100])
    s = LoadResult.from_histogram({"duration_s": 10.0}, hist).summary()
    assert (s["count"], s["actual_rps"]) == (100, 10.0)
    assert s["p50"] == pytest.approx(5 + 5 * 10 / 50) and s["p99"] == pytest.approx(25.0)
    assert s["p999"] == 25.0  # rank 99.9 falls in +Inf: its lower edge, never an invented tail
    assert math.isnan(s["max"]) and math.isnan(s["min"]) and math.isnan(s["mean"])  # unknown, not guessed
    assert math.isnan(s["error_pct"])  # no status counts at all


# -- workbench ingest ----------------------------------------------------------------------------------


def test_ingest_prints_a_row_per_file(shared: Path) -> None:
    base = shared / FIXTURES / "2019-07-10-175333_193ff770_qps_1000_c_16_1024_base.json"
    both = shared / FIXTURES / "2019-07-10-174932_193ff770_qps_1000_c_16_1024_both.json"
    proc = run_workbench("ingest", str(base), str(both))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    base_row = next(line for line in lines if base.name in line)
    both_row = next(line for line in lines if both.name in line)
    assert " 0.630 " in base_row and " 1.243 " in base_row and " fortio " in base_row  # 629.7 µs
    assert " 4.380 " in both_row and " 12.284 " in both_row and " 240000 " in both_row
    as_json = run_workbench("ingest", "--json", str(base), str(both))
    rows = json.loads(as_json.stdout)
    assert [round(r["p50"] * 1000, 1) for r in rows] == [629.7, 4380.3] and rows[0]["connections"] == 16


def test_ingest_bad_file_exits_2_with_one_line() -> None:
    bad = DATA / "fortio-empty-histogram.json"
    proc = run_workbench("ingest", str(bad))
    assert proc.returncode == 2
    assert proc.stderr == f"{bad}: DurationHistogram.Data: empty histogram (no buckets)\n"
    assert "Traceback" not in proc.stdout + proc.stderr
