"""OTLP traces: decode what Envoy's OpenTelemetry tracer and the demo apps send, encode the apps'
spans, and export a run's spans as OTLP JSON.

Decoding uses the ``opentelemetry-proto`` messages (``ExportTraceServiceRequest``) for protobuf
bodies (``application/x-protobuf``, what Envoy's HTTP exporter posts to ``/v1/traces``) and reads
the OTLP JSON encoding (``application/json``: ids in hex; Tempo's API answers the same shape with
base64 ids, under ``batches`` in Tempo 1.x/2.x, ``resourceSpans`` or ``trace.resourceSpans``).

Which span is which: Envoy tags every span with ``node_id`` (the sidecar's name, e.g.
``catalog-v1-inbound``), which the caller's ``sidecars`` map resolves to service, version and
direction; its kind says client (``egress``, SPAN_KIND_CLIENT) or server (``ingress``,
SPAN_KIND_SERVER). The demo apps set ``workbench.role: app`` and their resource's
``service.name``/``service.version``. Other sources (a cluster's Jaeger or Tempo) map by kind:
CLIENT → client, SERVER → server, anything else → app.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from workbench.traces.spans import SpanFileError

__all__ = [
    "ROLE_ATTRIBUTE",
    "decode",
    "encode",
    "records_from_json",
    "records_from_proto",
    "to_json",
]

ROLE_ATTRIBUTE = "workbench.role"
KIND_ROLE = {Span.SPAN_KIND_CLIENT: "client", Span.SPAN_KIND_SERVER: "server"}
ROLE_KIND = {"client": Span.SPAN_KIND_CLIENT, "server": Span.SPAN_KIND_SERVER, "app": Span.SPAN_KIND_SERVER}
_JSON_KINDS = dict(Span.SpanKind.items())
_STATUS_NAMES = set(Status.StatusCode.keys())
Sidecars = Mapping[str, Mapping[str, str]]


# -------------------------------------------------------------------------------------------------
# Decoding


def _any_value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    return getattr(v, which) if which in ("string_value", "int_value", "double_value", "bool_value") else None


def _record(
    span: dict[str, Any], attrs: dict[str, Any], resource: dict[str, Any], sidecars: Sidecars | None
) -> dict[str, Any]:
    """One raw span record (``spans.table`` validates it) from decoded OTLP parts."""
    node = str(attrs.get("node_id") or "")
    sidecar = (sidecars or {}).get(node, {})
    role = attrs.get(ROLE_ATTRIBUTE) or KIND_ROLE.get(span.get("kind"), "app")
    status = attrs.get("http.status_code") or attrs.get("http.response.status_code")
    error = (
        str(attrs.get("error", "")).lower() == "true" or span.get("status_code") == Status.STATUS_CODE_ERROR
    )
    start, end = span.get("start_ns"), span.get("end_ns")
    return {
        "trace_id": span.get("trace_id"),
        "span_id": span.get("span_id"),
        "parent_id": span.get("parent_id"),
        "service": sidecar.get("service") or resource.get("service.name") or "",
        "version": sidecar.get("version") or resource.get("service.version") or attrs.get("version") or "",
        "role": role,
        "name": span.get("name") or "",
        "start_us": None if start is None else int(start) // 1000,
        "duration_us": None if start is None or end is None else (int(end) - int(start)) // 1000,
        "status": status,
        "error": error,
        "upstream_cluster": attrs.get("upstream_cluster") or "",
        "peer": attrs.get("peer.service") or "",
        "request_id": attrs.get("guid:x-request-id") or attrs.get("request_id") or "",
    }


def records_from_proto(
    request: ExportTraceServiceRequest, sidecars: Sidecars | None = None
) -> list[dict[str, Any]]:
    """Raw span records of one ``ExportTraceServiceRequest``."""
    out = []
    for rs in request.resource_spans:
        resource = {kv.key: _any_value(kv.value) for kv in rs.resource.attributes}
        for ss in rs.scope_spans:
            for s in ss.spans:
                attrs = {kv.key: _any_value(kv.value) for kv in s.attributes}
                span = {
                    "trace_id": s.trace_id.hex() if s.trace_id else None,
                    "span_id": s.span_id.hex() if s.span_id else None,
                    "parent_id": s.parent_span_id.hex(),
                    "name": s.name,
                    "kind": s.kind,
                    "start_ns": s.start_time_unix_nano or None,
                    "end_ns": s.end_time_unix_nano or None,
                    "status_code": s.status.code,
                }
                out.append(_record(span, attrs, resource, sidecars))
    return out


def count_spans(body: bytes) -> int:
    """Spans in a protobuf export request (what a dropped request held), 0 when unreadable."""
    try:
        req = ExportTraceServiceRequest.FromString(body)
    except DecodeError:
        return 0
    return sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)


def decode(
    body: bytes, content_type: str = "application/x-protobuf", sidecars: Sidecars | None = None
) -> list[dict[str, Any]]:
    """Raw span records of an OTLP/HTTP export body, protobuf or JSON; SpanFileError says why not."""
    if "json" in content_type:
        try:
            doc = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SpanFileError(f"OTLP JSON body is not JSON: {exc}") from None
        return records_from_json(doc, sidecars)
    try:
        req = ExportTraceServiceRequest.FromString(body)
    except DecodeError as exc:
        raise SpanFileError(f"OTLP protobuf body cannot be decoded: {exc}") from None
    return records_from_proto(req, sidecars)


def _json_id(value: Any, digits: int) -> str | None:
    """An id from OTLP JSON: hex as the spec says, or base64 as Tempo's API answers."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    if len(text) == digits and all(c in "0123456789abcdefABCDEF" for c in text):
        return text.lower()
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return text  # left for spans.table to reject as an invalid id
    return raw.hex()


def _json_value(v: Any) -> Any:
    if not isinstance(v, dict):
        return None
    for key in ("stringValue", "intValue", "doubleValue", "boolValue"):
        if key in v:
            return v[key]
    return None


def _json_attrs(items: Any) -> dict[str, Any]:
    if not isinstance(items, list):
        return {}
    return {a["key"]: _json_value(a.get("value")) for a in items if isinstance(a, dict) and "key" in a}


def records_from_json(doc: Any, sidecars: Sidecars | None = None) -> list[dict[str, Any]]:
    """Raw span records of an OTLP JSON document (``resourceSpans``, Tempo's ``batches`` or
    ``trace.resourceSpans``); SpanFileError when it has none of those."""
    if isinstance(doc, dict) and isinstance(doc.get("trace"), dict):
        doc = doc["trace"]
    if not isinstance(doc, dict) or not any(k in doc for k in ("resourceSpans", "batches")):
        raise SpanFileError("not OTLP JSON: expected an object with 'resourceSpans' (or Tempo's 'batches')")
    out = []
    for rs in doc.get("resourceSpans") or doc.get("batches") or []:
        if not isinstance(rs, dict):
            continue
        resource = _json_attrs((rs.get("resource") or {}).get("attributes"))
        for ss in rs.get("scopeSpans") or rs.get("instrumentationLibrarySpans") or []:
            for s in (ss or {}).get("spans") or []:
                if not isinstance(s, dict):
                    continue
                kind = s.get("kind")
                kind = _JSON_KINDS.get(kind, 0) if isinstance(kind, str) else kind
                status = s.get("status") or {}
                code = status.get("code") if isinstance(status, dict) else None
                if isinstance(code, str):
                    code = Status.StatusCode.Value(code) if code in _STATUS_NAMES else None
                span = {
                    "trace_id": _json_id(s.get("traceId"), 32),
                    "span_id": _json_id(s.get("spanId"), 16),
                    "parent_id": _json_id(s.get("parentSpanId"), 16) or "",
                    "name": s.get("name"),
                    "kind": kind,
                    "start_ns": s.get("startTimeUnixNano"),
                    "end_ns": s.get("endTimeUnixNano"),
                    "status_code": code,
                }
                out.append(_record(span, _json_attrs(s.get("attributes")), resource, sidecars))
    return out


# -------------------------------------------------------------------------------------------------
# Encoding (the demo apps' own spans) and export


def _kv(key: str, value: Any) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


def encode(service: str, version: str, spans: Iterable[Mapping[str, Any]]) -> bytes:
    """An OTLP protobuf export body for one service version's spans (dicts with hex ``trace_id``,
    ``span_id``, ``parent_id``, ``name``, ``start_ns``, ``end_ns``, ``status``, ``error``,
    ``request_id``, ``peer``): what the demo apps post to the receiver."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend([_kv("service.name", service), _kv("service.version", version)])
    ss = rs.scope_spans.add()
    ss.scope.name = "workbench.demo-app"
    for s in spans:
        span = ss.spans.add()
        span.trace_id = bytes.fromhex(s["trace_id"])
        span.span_id = bytes.fromhex(s["span_id"])
        if s.get("parent_id"):
            span.parent_span_id = bytes.fromhex(s["parent_id"])
        span.name = s.get("name", "")
        span.kind = ROLE_KIND[s.get("role", "app")]
        span.start_time_unix_nano = int(s["start_ns"])
        span.end_time_unix_nano = int(s["end_ns"])
        span.attributes.extend(
            [_kv(ROLE_ATTRIBUTE, s.get("role", "app")), _kv("http.status_code", int(s.get("status", 0)))]
            + [_kv("guid:x-request-id", s["request_id"])] * bool(s.get("request_id"))
        )
        if s.get("error"):
            span.status.code = Status.STATUS_CODE_ERROR
    return req.SerializeToString()


def _json_kv(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}  # int64 as a string, per the JSON mapping
    return {"key": key, "value": {"stringValue": str(value)}}


def to_json(spans: pa.Table) -> dict[str, Any]:
    """A run's spans as one OTLP JSON ``ExportTraceServiceRequest`` (ids in hex, times in ns as
    strings, one ``resourceSpans`` entry per service and version) — what an OTLP/HTTP collector
    accepts at ``/v1/traces`` with ``Content-Type: application/json``."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in spans.to_pylist():
        start_ns = r["start_us"] * 1000
        attrs = [_json_kv(ROLE_ATTRIBUTE, r["role"]), _json_kv("http.status_code", int(r["status"]))]
        for key, col in (("upstream_cluster", "upstream_cluster"), ("peer.service", "peer"),
                         ("guid:x-request-id", "request_id")):  # fmt: skip
            if r[col]:
                attrs.append(_json_kv(key, r[col]))
        span: dict[str, Any] = {
            "traceId": r["trace_id"],
            "spanId": r["span_id"],
            "name": r["name"] or r["role"],
            "kind": int(ROLE_KIND[r["role"]]),
            "startTimeUnixNano": str(start_ns),
            "endTimeUnixNano": str(start_ns + r["duration_us"] * 1000),
            "attributes": attrs,
            "status": {"code": int(Status.STATUS_CODE_ERROR if r["error"] else Status.STATUS_CODE_UNSET)},
        }
        if r["parent_id"]:
            span["parentSpanId"] = r["parent_id"]
        groups.setdefault((r["service"], r["version"]), []).append(span)
    resource_spans = []
    for (service, version), items in groups.items():
        attributes = [_json_kv("service.name", service)]
        if version:
            attributes.append(_json_kv("service.version", version))
        resource_spans.append(
            {
                "resource": {"attributes": attributes},
                "scopeSpans": [{"scope": {"name": "mesh-workbench"}, "spans": items}],
            }
        )
    return {"resourceSpans": resource_spans}
