"""Traces as data: validation, critical paths (against Jaeger's recursive algorithm), bad input,
formats (OTLP, Zipkin, Jaeger) and the receiver's bounded queue."""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow as pa
import pytest
from google.protobuf.descriptor import FieldDescriptor
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from workbench.traces import critical, jaeger, otlp, spans, zipkin
from workbench.traces.receiver import Receiver


def _rec(trace: str, span: str, parent: str, service: str, start: int, dur: int, **extra) -> dict:
    return {"trace_id": trace, "span_id": span, "parent_id": parent, "service": service, "start_us": start,
            "duration_us": dur, "role": extra.pop("role", "app"), **extra}  # fmt: skip


def random_trace(rng: random.Random, trace: str, n: int, t0: int = 1_000_000) -> list[dict]:
    """A random tree: each span inside its parent (some touching its ends), children concurrent or
    sequential, zero-length spans now and then."""
    out = [_rec(trace, "1", "", "s0", t0, rng.randint(50, 5000))]
    for i in range(2, n + 1):
        p = out[rng.randrange(len(out))]
        ps, pd_ = p["start_us"], p["duration_us"]
        s = ps + rng.randint(0, pd_)
        d = rng.choice([0, rng.randint(0, ps + pd_ - s)])
        out.append(_rec(trace, format(i, "x"), p["span_id"], f"s{rng.randrange(5)}", s, d))
    return out


def jaeger_reference(records: list[dict]) -> dict[str, int]:
    """Jaeger UI's computeCriticalPath, literally (recursive, children sorted by end time desc):
    span id -> critical-path self time. Spans must already lie inside their parents."""
    by_id = {r["span_id"]: r for r in records}
    children: dict[str, list[str]] = {}
    for r in records:
        if r["parent_id"]:
            children.setdefault(r["parent_id"], []).append(r["span_id"])
    end = {k: r["start_us"] + r["duration_us"] for k, r in by_id.items()}
    for k in children:
        children[k].sort(key=lambda c: end[c], reverse=True)
    out: dict[str, int] = dict.fromkeys(by_id, 0)

    def lfc(span: str, before: str | None) -> str | None:
        kids = children.get(span, [])
        if before is None:
            return kids[0] if kids else None
        i = kids.index(before)
        return next((c for c in kids[i + 1 :] if end[c] <= by_id[before]["start_us"]), None)

    def walk(span: str, returning: str | None = None, section_end: int | None = None) -> None:
        while True:
            cur_end = section_end if section_end is not None else end[span]
            child = lfc(span, returning)
            if child is not None:
                out[span] += cur_end - end[child]
                walk(child)
                returning, section_end = child, by_id[child]["start_us"]
                continue
            out[span] += cur_end - by_id[span]["start_us"]
            return

    root = next(r["span_id"] for r in records if not r["parent_id"])
    walk(root)
    return out


def test_critical_path_matches_jaegers_algorithm_and_sums_to_the_root() -> None:
    rng = random.Random(3)
    records = []
    for t in range(200):
        records += random_trace(rng, format(t + 1, "x"), rng.randint(1, 25), t0=rng.randint(0, 10**9))
    table, intake = spans.table(records)
    assert intake.kept == len(records)
    cp = critical.analyse(table)
    assert cp.quality["orphans"] == 0 and cp.quality["clamped"] == 0
    keys = zip(table.column("trace_id").to_pylist(), table.column("span_id").to_pylist(), strict=True)
    got = dict(zip(keys, cp.self_us.tolist(), strict=True))
    for t in range(200):
        trace = format(t + 1, "x")
        mine = [r for r in records if r["trace_id"] == trace]
        ref = jaeger_reference(mine)
        tid = trace.rjust(32, "0")
        for span, value in ref.items():
            assert got[(tid, span.rjust(16, "0"))] == value, (trace, span)
    # the self times partition each root's interval
    assert (cp.traces["cp_us"] == cp.traces["duration_us"]).all()


def test_sequential_and_concurrent_children() -> None:
    # root 0-100: a 10-40 and b 20-90 run together, c 92-98 after them; b calls d 30-80
    recs = [_rec("a", "1", "", "fe", 0, 100), _rec("a", "2", "1", "cat", 10, 30),
            _rec("a", "3", "1", "rev", 20, 70), _rec("a", "4", "1", "pr", 92, 6),
            _rec("a", "5", "3", "rat", 30, 50)]  # fmt: skip
    cp = critical.analyse(spans.table(recs)[0])
    assert cp.on_path.tolist() == [True, False, True, True, True]
    assert cp.self_us.tolist() == [24, 0, 20, 6, 50]
    # exclusive time: the root waited on the union of 10-90 and 92-98
    assert cp.exclusive_us.tolist() == [14, 30, 20, 6, 50]
    shares = cp.shares((0.5,))
    assert shares.set_index("service")["share"].to_dict() == pytest.approx(
        {"rat": 0.5, "fe": 0.24, "rev": 0.2, "pr": 0.06}
    )


def test_broken_traces_and_clock_skew_are_counted_not_fatal() -> None:
    recs = [
        _rec("b", "1", "", "fe", 0, 100),
        _rec("b", "2", "1", "cat", -20, 50),  # starts 20 µs before its parent: clamped
        _rec("b", "3", "9", "lost", 10, 5),  # parent 9 was never received: an orphan
        _rec("b", "4", "3", "under-orphan", 11, 2),
        _rec("b", "5", "1", "late", 500, 10),  # entirely after its parent: left out
        _rec("c", "7", "8", "x", 0, 10),  # a trace whose root is lost
        _rec("c", "8", "7", "y", 0, 10),  # ... and whose spans form a cycle
        _rec("d", "1", "", "fe", 0, 10),
        _rec("d", "1", "", "fe", 0, 10),  # duplicate span id
    ]
    table, _ = spans.table(recs)
    cp = critical.analyse(table)
    q = cp.quality
    assert q["orphans"] == 1 and q["broken_traces"] == 1
    assert q["clamped"] == 1 and q["clamped_us"] == 20
    assert q["outside"] == 1
    assert q["cycles"] == 2 and q["duplicates"] == 1
    t = cp.traces.set_index("trace_id")
    b = t.loc["b".rjust(32, "0")]
    assert not b["complete"] and b["orphans"] == 1
    assert b["cp_us"] == b["duration_us"] == 100  # the orphan's subtree is not on the path
    assert not cp.in_tree[2] and not cp.in_tree[3]
    text = cp.explain_quality()
    for words in ("1 orphan spans", "clamped", "outside their parent", "duplicate", "cycles"):
        assert words in text


def test_missing_fields_and_bad_ids_are_dropped_by_reason() -> None:
    recs = [
        _rec("a", "1", "", "fe", 0, 10),
        {"span_id": "2", "start_us": 0, "duration_us": 1},
        _rec("a", "zz", "", "fe", 0, 10),
        _rec("a", "3", "", "fe", None, 10),
        _rec("a", "4", "", "fe", 0, -5),
        _rec("0" * 32, "5", "", "fe", 0, 1),
        _rec("a", "6", "1", "fe", 1, 2, role="sidecar"),
    ]
    table, intake = spans.table(recs)
    assert table.num_rows == 1
    assert intake.dropped == {"missing trace_id": 1, "invalid span_id": 1, "missing start_us": 1,
                              "invalid duration_us": 1, "invalid trace_id": 1, "invalid role": 1}  # fmt: skip
    assert "dropped 6" in intake.explain()


def test_span_files_round_trip_and_bad_files_are_named(tmp_path) -> None:
    table, _ = spans.table(random_trace(random.Random(1), "ab", 10))
    path = spans.write(table, tmp_path / "s.parquet")
    assert spans.read(path).equals(table)
    pa.parquet.write_table(pa.table({"trace_id": ["a"]}), tmp_path / "bad.parquet")
    with pytest.raises(spans.SpanFileError, match="missing column"):
        spans.read(tmp_path / "bad.parquet")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(spans.SpanFileError, match="not a Parquet span file"):
        spans.read(tmp_path / "junk.parquet")


# -------------------------------------------------------------------------------------------------
# Formats


def _app_spans() -> list[dict]:
    return [
        {"trace_id": "a" * 32, "span_id": "1" * 16, "parent_id": "", "name": "/", "role": "app",
         "start_ns": 1_700_000_000_000_000_000, "end_ns": 1_700_000_000_002_500_000, "status": 200,
         "error": False, "request_id": "r-1"},
        {"trace_id": "a" * 32, "span_id": "2" * 16, "parent_id": "1" * 16, "name": "/", "role": "app",
         "start_ns": 1_700_000_000_000_500_000, "end_ns": 1_700_000_000_001_000_000, "status": 503,
         "error": True, "request_id": "r-1"},
    ]  # fmt: skip


def test_otlp_protobuf_round_trip() -> None:
    body = otlp.encode("catalog", "v2", _app_spans())
    assert otlp.count_spans(body) == 2
    table, intake = spans.table(otlp.decode(body))
    rows = table.to_pylist()
    assert intake.n_dropped == 0
    assert rows[0]["service"] == "catalog" and rows[0]["version"] == "v2" and rows[0]["role"] == "app"
    assert rows[0]["duration_us"] == 2500 and rows[1]["parent_id"] == "1" * 16
    assert rows[1]["error"] and rows[1]["status"] == 503 and rows[1]["request_id"] == "r-1"
    with pytest.raises(spans.SpanFileError, match="cannot be decoded"):
        otlp.decode(b"\xff\xff\xff")


def test_envoy_spans_resolve_their_sidecar() -> None:
    """Envoy tags each span with node_id (the sidecar's name); the map names service and version."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "catalog"
    s = rs.scope_spans.add().spans.add()
    s.trace_id, s.span_id, s.parent_span_id = (
        bytes.fromhex("ab" * 16),
        bytes.fromhex("cd" * 8),
        bytes.fromhex("ef" * 8),
    )
    s.kind, s.start_time_unix_nano, s.end_time_unix_nano = 3, 1_000_000_000, 1_004_000_000
    tags = {"node_id": "catalog-v2-outbound", "upstream_cluster": "outbound|pricing|v1",
            "http.status_code": "503", "error": "true", "guid:x-request-id": "req-9"}  # fmt: skip
    for key, value in tags.items():
        s.attributes.add(key=key).value.string_value = value
    sidecars = {"catalog-v2-outbound": {"service": "catalog", "version": "v2", "direction": "outbound"}}
    row = spans.table(otlp.decode(req.SerializeToString(), sidecars=sidecars))[0].to_pylist()[0]
    assert (row["service"], row["version"], row["role"], row["peer"]) == (
        "catalog",
        "v2",
        "client",
        "pricing",
    )
    assert (row["status"], row["error"], row["request_id"], row["duration_us"]) == (503, True, "req-9", 4000)


def _check_json_names(doc: dict, descriptor, path: str = "") -> int:
    """Every key of ``doc`` is a field of the proto message (by its JSON name); returns keys checked."""
    names = {f.json_name: f for f in descriptor.fields}
    checked = 0
    for key, value in doc.items():
        assert key in names, f"{path}.{key} is not a field of {descriptor.full_name}"
        checked += 1
        f = names[key]
        if (
            f.type == FieldDescriptor.TYPE_MESSAGE
            and f.message_type.full_name != "opentelemetry.proto.common.v1.AnyValue"
        ):
            repeated = (
                f.is_repeated if hasattr(f, "is_repeated") else f.label == FieldDescriptor.LABEL_REPEATED
            )
            assert repeated == isinstance(value, list), f"{path}.{key}: a list exactly when repeated"
            items = value if repeated else [value]
            for item in items:
                checked += _check_json_names(item, f.message_type, f"{path}.{key}")
    return checked


def test_otlp_json_export_uses_the_published_field_names_and_reads_back() -> None:
    table, _ = spans.table(otlp.decode(otlp.encode("catalog", "v2", _app_spans())))
    doc = otlp.to_json(table)
    assert _check_json_names(doc, ExportTraceServiceRequest.DESCRIPTOR) > 20
    span = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][1]
    assert span["traceId"] == "a" * 32 and span["parentSpanId"] == "1" * 16  # hex, as OTLP JSON says
    assert span["startTimeUnixNano"] == "1700000000000500000"
    back, _ = spans.table(otlp.records_from_json(json.loads(json.dumps(doc))))
    assert back.to_pylist() == table.to_pylist()


JAEGER_SCHEMA = {  # Jaeger's model/json: what /api/traces answers and Jaeger UI's JSON upload opens
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["traceID", "spans", "processes"],
                "additionalProperties": False,
                "properties": {
                    "traceID": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                    "warnings": {"type": ["array", "null"]},
                    "processes": {
                        "type": "object",
                        "additionalProperties": {
                            "type": "object", "required": ["serviceName", "tags"],
                            "additionalProperties": False,
                            "properties": {"serviceName": {"type": "string"},
                                           "tags": {"$ref": "#/$defs/tags"}},
                        },
                    },
                    "spans": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["traceID", "spanID", "operationName", "references", "startTime",
                                         "duration", "tags", "logs", "processID"],
                            "additionalProperties": False,
                            "properties": {
                                "traceID": {"type": "string"},
                                "spanID": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
                                "parentSpanID": {"type": "string"}, "flags": {"type": "integer"},
                                "operationName": {"type": "string"},
                                "references": {"type": "array", "items": {
                                    "type": "object", "required": ["refType", "traceID", "spanID"],
                                    "additionalProperties": False,
                                    "properties": {"refType": {"enum": ["CHILD_OF", "FOLLOWS_FROM"]},
                                                   "traceID": {"type": "string"},
                                                   "spanID": {"type": "string"}}}},
                                "startTime": {"type": "integer"}, "duration": {"type": "integer"},
                                "tags": {"$ref": "#/$defs/tags"}, "logs": {"type": "array"},
                                "processID": {"type": "string"}, "warnings": {"type": ["array", "null"]},
                            },
                        },
                    },
                },
            },
        },
        "total": {"type": "integer"}, "limit": {"type": "integer"}, "offset": {"type": "integer"},
        "errors": {"type": ["array", "null"]},
    },
    "$defs": {
        "tags": {"type": "array", "items": {
            "type": "object", "required": ["key", "type", "value"], "additionalProperties": False,
            "properties": {"key": {"type": "string"},
                           "type": {"enum": ["string", "bool", "int64", "float64", "binary"]}, "value": {}}}},
    },
}  # fmt: skip


def test_jaeger_json_export_is_valid_and_reads_back() -> None:
    import jsonschema

    table, _ = spans.table(
        random_trace(random.Random(5), "f00d", 12) + random_trace(random.Random(6), "beef", 3)
    )
    doc = jaeger.to_json(table)
    jsonschema.validate(doc, JAEGER_SCHEMA)
    assert len(doc["data"]) == 2
    for trace in doc["data"]:
        pids = {s["processID"] for s in trace["spans"]}
        assert pids <= set(trace["processes"])
    back, _ = spans.table(jaeger.records(json.loads(json.dumps(doc))))
    key = ["trace_id", "span_id", "parent_id", "service", "start_us", "duration_us"]
    assert back.select(key).to_pylist() == table.select(key).to_pylist()
    with pytest.raises(spans.SpanFileError, match="not Jaeger JSON"):
        jaeger.records({"traces": []})


def test_zipkin_v2_json() -> None:
    doc = [
        {"traceId": "463ac35c9f6413ad", "id": "a2fb4a1d1a96d312", "parentId": "0020000000000001",
         "name": "egress", "kind": "CLIENT", "timestamp": 1_700_000_000_000_000, "duration": 1500,
         "localEndpoint": {"serviceName": "frontend"}, "shared": False,
         "tags": {"node_id": "frontend-v1-outbound", "upstream_cluster": "outbound|catalog|v1",
                  "http.status_code": "200", "guid:x-request-id": "r-7"}},
        {"traceId": "463ac35c9f6413ad", "name": "x", "timestamp": 1, "duration": 1},  # no id
    ]  # fmt: skip
    table, intake = spans.table(zipkin.decode(json.dumps(doc).encode()))
    row = table.to_pylist()[0]
    assert row["trace_id"] == "463ac35c9f6413ad".rjust(32, "0")  # 64-bit ids padded to 128
    assert (row["service"], row["role"], row["peer"], row["status"]) == ("frontend", "client", "catalog", 200)
    assert intake.dropped == {"missing span_id": 1}
    with pytest.raises(spans.SpanFileError, match="expected a list"):
        zipkin.decode(b'{"spans": []}')


def test_receiver_never_blocks_and_counts_what_it_drops(tmp_path) -> None:
    r = Receiver(tmp_path, queue_size=2, flush_s=0.05)
    body = otlp.encode("catalog", "v1", _app_spans())
    for _ in range(5):  # the writer is not running yet: the queue holds 2, the rest is dropped
        r.offer("otlp", "application/x-protobuf", body)
    r.offer("zipkin", "application/json", b"not json")
    stats = r.stats()
    assert stats["requests"] == 6 and stats["dropped_requests"] == 4
    assert stats["dropped_spans"] == 3 * 2
    r.start()
    r.stop()
    stats = r.stats()
    assert stats["written_spans"] == 4 and stats["received_spans"] == 4
    assert spans.read(tmp_path).num_rows == 4
    assert json.loads((tmp_path / "receiver.json").read_text())["dropped_spans"] == 6


def test_ids_decode_exactly_from_arrow_buffers() -> None:
    ids = [format(random.Random(i).getrandbits(64), "016x") for i in range(1000)] + [""]
    values, present = critical._ids64(pa.array(ids))
    assert present.tolist() == [True] * 1000 + [False]
    assert values[:1000].tolist() == [int(x, 16) for x in ids[:1000]]
    sliced = pa.array(ids).slice(10, 5)
    assert critical._ids64(sliced)[0].tolist() == [int(x, 16) for x in ids[10:15]]
    assert np.all(critical._ids64(pa.array(["abc", "12"]))[0] == [0xABC, 0x12])  # not normalised: still exact


@pytest.mark.parametrize("tracer", ["opentelemetry", "zipkin"])
def test_every_sidecar_gets_envoys_tracer_and_envoy_accepts_it(tmp_path, tracer: str) -> None:
    from workbench.backends.local import envoy as ev
    from workbench.backends.local.layout import plan
    from workbench.backends.local.mesh import _envoy_binary
    from workbench.backends.local.topology import load_topology

    topo = load_topology()
    layout = plan(topo, "both", tmp_path)
    for sc in layout.sidecars:
        sc.directory.mkdir(parents=True, exist_ok=True)
    traffic = {n: ev.TrafficPolicy(split={v: 100 if i == 0 else 0 for i, v in enumerate(s.versions)})
               for n, s in topo.services.items()}  # fmt: skip
    view = ev.MeshView(layout.inbound_ports(), traffic, {}, None, ev.Tracing(layout.traces_port, 25, tracer))
    chosen = [layout.inbound["catalog"]["v1"], layout.outbound["catalog-v1"]]
    configs = {sc.name: ev.rendered(sc, view) for sc in chosen}
    ev.validate(_envoy_binary(), configs, tmp_path / "validate")  # EnvoyConfigError if Envoy refuses it
    for sc in chosen:
        boot = configs[sc.name]["bootstrap"]
        listener = boot["static_resources"]["listeners"][0]
        assert listener["traffic_direction"] == sc.direction.upper()  # server or client spans
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        assert hcm["tracing"]["random_sampling"] == {"value": 25}
        assert hcm["tracing"]["provider"]["name"] == f"envoy.tracers.{tracer}"
        cluster = next(c for c in boot["static_resources"]["clusters"] if c["name"] == ev.TRACES_CLUSTER)
        port = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        assert port["socket_address"] == {"address": "127.0.0.1", "port_value": layout.traces_port}
        layer = boot["layered_runtime"]["layers"][0]["static_layer"]
        assert layer[f"tracing.{tracer}.flush_interval_ms"] == 1000
    # without tracing nothing of it is rendered
    plain = ev.rendered(chosen[0], ev.MeshView(layout.inbound_ports(), traffic, {}, None))["bootstrap"]
    assert "layered_runtime" not in plain and "tracing" not in json.dumps(plain)


def test_apps_read_and_write_w3c_and_b3_context() -> None:
    from workbench.backends.local.app import incoming_context, outgoing_headers

    tid, sid = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    assert incoming_context({"traceparent": f"00-{tid}-{sid}-01"}).sampled
    assert not incoming_context({"traceparent": f"00-{tid}-{sid}-00"}).sampled
    b3 = incoming_context({"x-b3-traceid": "a3ce929d0e0e4736", "x-b3-spanid": sid, "x-b3-sampled": "1"})
    assert b3.trace_id == "0" * 16 + "a3ce929d0e0e4736" and b3.span_id == sid
    assert incoming_context({"b3": f"{tid}-{sid}-1"}).trace_id == tid
    assert incoming_context({"traceparent": "00-" + "0" * 32 + f"-{sid}-01"}) is None  # invalid trace id
    # the sidecars' Zipkin tracer rewrote B3 only: an app of that mesh reads B3 first
    both = {"traceparent": f"00-{tid}-{'1' * 16}-01", "x-b3-traceid": tid, "x-b3-spanid": sid}
    assert incoming_context(both).span_id == "1" * 16 and incoming_context(both, "b3").span_id == sid
    out = outgoing_headers(tid, sid, True)
    assert (
        out["traceparent"] == f"00-{tid}-{sid}-01"
        and out["x-b3-spanid"] == sid
        and out["x-b3-sampled"] == "1"
    )


def test_tracing_leaves_the_cluster_sources_alone(tmp_path) -> None:
    """Inbound sidecars keep their static app cluster, outbound ones their CDS file, tracing or not."""
    from workbench.backends.local import envoy as ev
    from workbench.backends.local.layout import plan
    from workbench.backends.local.topology import load_topology

    topo = load_topology()
    layout = plan(topo, "both", tmp_path)
    traffic = {
        n: ev.TrafficPolicy(split={v: 100 for v in list(s.versions)[:1]}) for n, s in topo.services.items()
    }
    for tracing in (None, ev.Tracing(layout.traces_port)):
        view = ev.MeshView(layout.inbound_ports(), traffic, {}, None, tracing)
        inbound = ev.bootstrap(layout.inbound["catalog"]["v1"], view)
        outbound = ev.bootstrap(layout.outbound["catalog-v1"], view)
        assert "dynamic_resources" not in inbound
        assert inbound["static_resources"]["clusters"][0]["name"] == "local_app"
        assert outbound["dynamic_resources"]["cds_config"]["path_config_source"]["path"].endswith("cds.yaml")
        names = [c["name"] for c in outbound["static_resources"].get("clusters", [])]
        assert names == ([ev.TRACES_CLUSTER] if tracing else [])


def test_parquet_analysis_reads_column_by_column_and_agrees(tmp_path) -> None:
    rng = random.Random(8)
    recs = [r for t in range(30) for r in random_trace(rng, format(t + 1, "x"), 12)]
    table, _ = spans.table(recs)
    spans.write(table, tmp_path / "s.parquet")
    a, b = critical.analyse(table), critical.analyse_parquet(tmp_path / "s.parquet")
    assert a.self_us.tolist() == b.self_us.tolist() and a.traces.equals(b.traces)
    with pytest.raises(ValueError, match="missing column"):
        pa.parquet.write_table(pa.table({"x": [1]}), tmp_path / "bad.parquet")
        critical.analyse_parquet(tmp_path / "bad.parquet")
