"""One error definition everywhere: a request is an error when it got a 5xx or no answer.

The same four answers — 200, 403 (an authorization denial), 404 and 503 — go through every path that
summarises errors: a LoadResult's samples and its status counts, the k6, hey and fortio readers,
time windows, the two-arm comparison, the sweep table, the SMP export, the topology graph and
``workbench ingest``. Each must say 25 % (only the 503), never 75 % (every non-2xx).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, run_workbench
from workbench.analysis.localize import parse_lines
from workbench.analysis.topology import ServiceGraph
from workbench.load import storage
from workbench.load.formats import read_any
from workbench.load.formats.smp import to_smp
from workbench.load.results import LoadResult, error_mask
from workbench.load.sweep import table
from workbench.stats.compare import compare
from workbench.stats.windows import window_table

STATUSES = (200, 403, 404, 503)
EXPECTED_PCT = 25.0
T0 = pd.Timestamp("2026-01-01", tz="UTC")


def _samples(repeat: int = 1) -> pd.DataFrame:
    codes = list(STATUSES) * repeat
    return pd.DataFrame({
        "timestamp": T0 + pd.to_timedelta([0.01 * i for i in range(len(codes))], unit="s"),
        "latency_ms": [5.0] * len(codes), "status": codes, "variant": ["v1"] * len(codes),
    })  # fmt: skip


def _result(repeat: int = 1) -> LoadResult:
    meta = {"duration_s": 1.0, "rps": 4.0 * repeat, "requested_rps": 4.0 * repeat, "connections": 1,
            "mode": "both", "start": T0.isoformat(), "point": "p"}  # fmt: skip
    return LoadResult(meta, _samples(repeat))


def test_the_mask_itself() -> None:
    assert error_mask([200, 403, 404, 503, 0, -1, 599, 302]).tolist() == [
        False, False, False, True, True, True, True, False
    ]  # fmt: skip


def test_a_load_result_counts_only_the_503() -> None:
    assert _result().summary()["error_pct"] == EXPECTED_PCT
    counts = {str(c): 1 for c in STATUSES}
    assert LoadResult.from_histogram({"status_counts": counts}, None).summary()["error_pct"] == EXPECTED_PCT


def test_windows_and_the_comparison_count_only_the_503() -> None:
    w = window_table(_result(25).samples, 10.0, T0)
    assert w["errors"].sum() == 25 and w["count"].sum() == 100
    res = compare(_result(25), _result(25), metrics=("error_rate",), window="1s")
    assert res["error_rate"].baseline == EXPECTED_PCT and res["error_rate"].candidate == EXPECTED_PCT


def test_the_sweep_table_and_the_smp_export_count_only_the_503(tmp_path: Path) -> None:
    storage.save(_result(), tmp_path, "both_rps4_c1_rep0")
    assert table(tmp_path)["error_pct"].tolist() == [EXPECTED_PCT]
    assert to_smp(_result())["x_mesh_workbench"]["error_pct"] == EXPECTED_PCT


def _k6_csv(path: Path) -> Path:
    header = (
        "metric_name,timestamp,metric_value,check,error,error_code,group,method,name,proto,scenario,status,"
    )
    header += "subproto,tls_version,url,extra_tags"
    rows = [f"http_req_duration,{1595325560 + i},10.0,,,,,GET,http://x,HTTP/1.1,default,{code},,,http://x,"
            for i, code in enumerate(STATUSES)]  # fmt: skip
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _hey_csv(path: Path) -> Path:
    rows = [
        f"0.0100,0.0000,0.0000,0.0001,0.0095,0.0004,{code},{0.01 * i:.4f}" for i, code in enumerate(STATUSES)
    ]
    header = "response-time,DNS+dialup,DNS,Request-write,Response-delay,Response-read,status-code,offset"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _fortio_json(path: Path) -> Path:
    doc = json.loads((REPO / "tests" / "data" / "formats" / "fortio-current.json").read_text())
    doc["RetCodes"] = {str(c): 1 for c in STATUSES}
    doc["DurationHistogram"].update(
        Count=4,
        Min=0.001,
        Max=0.002,
        Sum=0.006,
        Avg=0.0015,
        Data=[{"Start": 0.001, "End": 0.002, "Percent": 100, "Count": 4}],
    )
    path.write_text(json.dumps(doc))
    return path


def test_every_reader_and_ingest_count_only_the_503(tmp_path: Path) -> None:
    files = [
        _k6_csv(tmp_path / "k6.csv"),
        _hey_csv(tmp_path / "hey.csv"),
        _fortio_json(tmp_path / "fortio.json"),
    ]
    for path in files:
        assert read_any(path).summary()["error_pct"] == EXPECTED_PCT, path.name
    proc = run_workbench("ingest", "--json", *map(str, files))
    assert proc.returncode == 0, proc.stderr
    assert [row["error_pct"] for row in json.loads(proc.stdout)] == [EXPECTED_PCT] * 3


def test_the_service_graph_counts_only_the_503() -> None:
    line = ('{{"start_time": "{t}", "duration_us": 900, "upstream_us": 800, "status": {code}, "caller": '
            '"catalog", "upstream_cluster": "outbound|pricing|v1", "request_id": "r{i}"}}')  # fmt: skip
    raw = {
        "catalog-v1-outbound": [line.format(t=1_700_000_000 + i, code=c, i=i) for i, c in enumerate(STATUSES)]
    }
    graph = ServiceGraph.from_access_logs(parse_lines(raw))
    (edge,) = graph.edges
    assert edge.error_rate * 100 == pytest.approx(EXPECTED_PCT)
