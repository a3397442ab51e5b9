"""Reading a cluster's traces: Jaeger's query API and Tempo's HTTP API, contract-tested with
pytest-httpserver (exact paths and query parameters; 4xx, 5xx, unreachable and bad bodies
explained; credentials sent as basic auth, never shown)."""

from __future__ import annotations

import base64
import json

import pytest
from pytest_httpserver import HTTPServer

from workbench import config
from workbench.traces import spans
from workbench.traces.jaeger import JaegerClient
from workbench.traces.query import TraceSourceError
from workbench.traces.tempo import TempoClient

JAEGER_TRACE = {
    "traceID": "5b8aa5a2d2c872e8321cf37308d69df2",
    "spans": [
        {"traceID": "5b8aa5a2d2c872e8321cf37308d69df2", "spanID": "051581bf3cb55c13", "flags": 1,
         "operationName": "GET /", "references": [], "startTime": 1_700_000_000_000_000, "duration": 5000,
         "tags": [{"key": "span.kind", "type": "string", "value": "server"},
                  {"key": "http.status_code", "type": "int64", "value": 200}],
         "logs": [], "processID": "p1", "warnings": None},
        {"traceID": "5b8aa5a2d2c872e8321cf37308d69df2", "spanID": "5fb8ad9f3b2a5c44", "flags": 1,
         "operationName": "egress catalog",
         "references": [{"refType": "CHILD_OF", "traceID": "5b8aa5a2d2c872e8321cf37308d69df2",
                         "spanID": "051581bf3cb55c13"}],
         "startTime": 1_700_000_000_000_500, "duration": 3000,
         "tags": [{"key": "span.kind", "type": "string", "value": "client"},
                  {"key": "error", "type": "bool", "value": True},
                  {"key": "http.status_code", "type": "int64", "value": 503},
                  {"key": "upstream_cluster", "type": "string",
                   "value": "outbound|9080||catalog.shop.svc.cluster.local"}],
         "logs": [], "processID": "p1", "warnings": None},
    ],
    "processes": {"p1": {"serviceName": "frontend.shop", "tags": [{"key": "service.version", "type": "string",
                                                                   "value": "v1"}]}},
    "warnings": None,
}  # fmt: skip


def test_jaeger_search_sends_the_documented_query(httpserver: HTTPServer) -> None:
    httpserver.expect_ordered_request(
        "/api/traces",
        method="GET",
        query_string={
            "service": "frontend.shop",
            "start": "1700000000000000",
            "end": "1700000060000000",
            "limit": "20",
        },
    ).respond_with_json({"data": [JAEGER_TRACE], "total": 0, "limit": 0, "offset": 0, "errors": None})
    records = JaegerClient(httpserver.url_for("/")).search("frontend.shop", 1_700_000_000_000_000,
                                                           1_700_000_060_000_000, limit=20)  # fmt: skip
    httpserver.check_assertions()
    table, intake = spans.table(records)
    rows = table.to_pylist()
    assert intake.n_dropped == 0 and len(rows) == 2
    assert (
        rows[0]["service"] == "frontend.shop" and rows[0]["version"] == "v1" and rows[0]["role"] == "server"
    )
    assert rows[1]["parent_id"] == "051581bf3cb55c13" and rows[1]["role"] == "client"
    assert rows[1]["error"] and rows[1]["status"] == 503 and rows[1]["duration_us"] == 3000


def test_jaeger_one_trace_and_services(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/api/traces/5b8aa5a2d2c872e8321cf37308d69df2").respond_with_json(
        {"data": [JAEGER_TRACE]}
    )
    httpserver.expect_request("/api/services").respond_with_json({"data": ["frontend.shop", "catalog.shop"]})
    client = JaegerClient(httpserver.url_for("/"))
    assert len(client.trace("5b8aa5a2d2c872e8321cf37308d69df2")) == 2
    assert client.services() == ["frontend.shop", "catalog.shop"]


def test_jaeger_answer_with_errors_and_no_data_is_explained(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/api/traces/abc").respond_with_json(
        {"data": None, "errors": [{"code": 404, "msg": "trace not found"}]}
    )
    with pytest.raises(TraceSourceError, match="trace not found"):
        JaegerClient(httpserver.url_for("/")).trace("abc")


@pytest.mark.parametrize(
    ("status", "words"),
    [(400, "rejected the query"), (401, "authentication is required"), (403, "may not read traces"),
     (404, "query URL"), (500, "server error"), (503, "server error")],
)  # fmt: skip
def test_http_errors_say_what_to_check(httpserver: HTTPServer, status: int, words: str) -> None:
    httpserver.expect_request("/api/search").respond_with_data("upstream says no", status=status)
    with pytest.raises(TraceSourceError, match=words) as info:
        TempoClient(httpserver.url_for("/")).search_ids("frontend", 1, 2)
    assert f"HTTP {status}" in str(info.value) and "upstream says no" in str(info.value)


def test_unreachable_and_not_json_are_explained() -> None:
    with pytest.raises(TraceSourceError, match=r"cannot connect to http://127\.0\.0\.1:9/api/services"):
        JaegerClient("http://127.0.0.1:9", timeout=2).services()


def test_body_that_is_not_json(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/api/services").respond_with_data(
        "<html>login</html>", content_type="text/html"
    )
    with pytest.raises(TraceSourceError, match="not JSON"):
        JaegerClient(httpserver.url_for("/")).services()


def test_credentials_go_as_basic_auth_and_never_into_messages(httpserver: HTTPServer) -> None:
    token = base64.b64encode(b"reader:s3cret-pw").decode()
    httpserver.expect_request("/api/services", headers={"Authorization": f"Basic {token}"}).respond_with_data(
        "nope", status=403
    )
    url = httpserver.url_for("/").replace("http://", "http://reader:s3cret-pw@")
    with pytest.raises(TraceSourceError) as info:
        JaegerClient(url).services()
    assert "HTTP 403" in str(info.value)  # the header matched: the credentials were sent
    assert "s3cret-pw" not in str(info.value) and "reader" not in str(info.value)


def test_tempo_search_then_fetch_each_trace(httpserver: HTTPServer) -> None:
    tid = "2f3e0cee77ae5dc9c17ade3689eb2e54"
    httpserver.expect_ordered_request(
        "/api/search", method="GET",
        query_string={"tags": "service.name=frontend", "start": "1700000000", "end": "1700000060",
                      "limit": "5"},
    ).respond_with_json({"traces": [{"traceID": tid, "rootServiceName": "frontend"}]})  # fmt: skip
    b64 = lambda h: base64.b64encode(bytes.fromhex(h)).decode()  # noqa: E731 - Tempo answers ids in base64
    httpserver.expect_ordered_request(f"/api/traces/{tid}", method="GET").respond_with_json(
        {
            "batches": [
                {
                    "resource": {"attributes": [{"key": "service.name",
                                                 "value": {"stringValue": "frontend"}}]},
                    "scopeSpans": [{"spans": [
                        {"traceId": b64(tid), "spanId": b64("00000000000000aa"), "name": "ingress",
                         "kind": "SPAN_KIND_SERVER", "startTimeUnixNano": "1700000000000000000",
                         "endTimeUnixNano": "1700000000004000000",
                         "attributes": [{"key": "http.status_code", "value": {"intValue": "200"}}]},
                        {"traceId": b64(tid), "spanId": b64("00000000000000bb"),
                         "parentSpanId": b64("00000000000000aa"), "name": "egress",
                         "kind": "SPAN_KIND_CLIENT", "startTimeUnixNano": "1700000000001000000",
                         "endTimeUnixNano": "1700000000003000000", "status": {"code": "STATUS_CODE_ERROR"}},
                    ]}],
                }
            ]
        }
    )  # fmt: skip
    records = TempoClient(httpserver.url_for("/")).search(
        "frontend", 1_700_000_000_000_000, 1_700_000_060_000_000, 5
    )
    httpserver.check_assertions()
    rows = spans.table(records)[0].to_pylist()
    assert [r["span_id"] for r in rows] == ["00000000000000aa", "00000000000000bb"]
    assert rows[0]["trace_id"] == tid and rows[1]["parent_id"] == "00000000000000aa"
    assert rows[0]["role"] == "server" and rows[1]["role"] == "client" and rows[1]["error"]
    assert rows[0]["duration_us"] == 4000 and rows[0]["status"] == 200


def test_tempo_trace_that_is_not_otlp(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/api/traces/abc").respond_with_json({"message": "trace not found"})
    with pytest.raises(TraceSourceError, match="not OTLP JSON"):
        TempoClient(httpserver.url_for("/")).trace("abc")


def test_config_names_one_trace_store() -> None:
    base = "backend: {type: kubernetes, prometheus_url: 'http://127.0.0.1:9090', traces: %s}\n"
    exp = "experiments: [{name: t, kind: traces, service: frontend}]\n"
    cfg = config.loads(base % "{jaeger: 'http://127.0.0.1:16686'}" + exp)
    assert cfg.backend.traces.kind() == "jaeger"
    assert isinstance(cfg.backend.traces.client(), JaegerClient)
    assert cfg.experiments[0].slowest == 5 and cfg.experiments[0].compare
    with pytest.raises(config.ConfigError, match="exactly one of 'jaeger'"):
        config.loads(base % "{jaeger: 'http://a:1', tempo: 'http://b:2'}" + exp)
    with pytest.raises(config.ConfigError, match="traces"):
        config.loads(base % "{zipkin: 'http://a:1'}" + exp)
    local = config.loads("backend: {type: local, tracing: {sampling: 10, tracer: zipkin}}\n" + exp)
    assert (
        local.backend.mesh_options()["tracing"] == 10 and local.backend.mesh_options()["tracer"] == "zipkin"
    )
    off = config.loads("backend: {type: local, tracing: null}\n" + exp)
    assert off.backend.mesh_options()["tracing"] is None
    assert config.loads(exp).backend.mesh_options()["tracing"] == 100
    with pytest.raises(config.ConfigError, match="sampling"):
        config.loads("backend: {type: local, tracing: {sampling: 120}}\n" + exp)


def test_jaeger_ui_file_round_trip(tmp_path) -> None:
    path = tmp_path / "trace.json"
    path.write_text(json.dumps({"data": [JAEGER_TRACE]}))
    from workbench.traces.jaeger import records

    table, _ = spans.table(records(json.loads(path.read_text())))
    assert table.num_rows == 2


def test_summary_schema_knows_every_kind() -> None:
    from workbench.report import ci

    kinds = ci.schema()["properties"]["experiments"]["items"]["properties"]["kind"]["enum"]
    assert set(kinds) == set(config.KINDS)
