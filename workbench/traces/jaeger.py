"""Jaeger JSON: read traces from Jaeger's query API, and export a run's spans as Jaeger UI JSON.

The format (Jaeger's ``model/json``, what ``/api/traces`` answers and what Jaeger UI's "JSON File"
upload opens): ``{"data": [trace, ...]}``; a trace is ``traceID``, ``spans``, ``processes``
(``processID`` → ``serviceName``, ``tags``) and ``warnings``; a span is ``traceID``, ``spanID``,
``flags``, ``operationName``, ``references`` (``refType`` ``CHILD_OF``/``FOLLOWS_FROM``,
``traceID``, ``spanID``), ``startTime`` and ``duration`` in µs, ``tags`` (``key``, ``type``,
``value``), ``logs``, ``processID`` and ``warnings``.

Query API (``JaegerClient``): ``GET /api/services``, ``GET /api/traces?service=S&start=µs&end=µs
&limit=N`` (search; ``operation``, ``tags`` optional) and ``GET /api/traces/<traceID>``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from workbench.traces.query import TraceSourceError, get_json
from workbench.traces.spans import SpanFileError

__all__ = ["JaegerClient", "records", "to_json"]

KIND_ROLE = {"client": "client", "server": "server"}


def _tags(items: Any) -> dict[str, Any]:
    if not isinstance(items, list):
        return {}
    return {t["key"]: t.get("value") for t in items if isinstance(t, dict) and "key" in t}


def _traces(doc: Any) -> list[dict[str, Any]]:
    if isinstance(doc, dict) and "data" in doc:
        doc = doc["data"]
    if isinstance(doc, dict) and "spans" in doc:
        doc = [doc]
    if not isinstance(doc, list) or not all(isinstance(t, dict) for t in doc):
        raise SpanFileError("not Jaeger JSON: expected {'data': [traces]} (or a trace, or a list of traces)")
    return doc


def records(doc: Any) -> list[dict[str, Any]]:
    """Raw span records of a Jaeger JSON document (query API answer or UI JSON file)."""
    out = []
    for trace in _traces(doc):
        processes = trace.get("processes") if isinstance(trace.get("processes"), dict) else {}
        for s in trace.get("spans") or []:
            if not isinstance(s, dict):
                continue
            tags = _tags(s.get("tags"))
            proc = processes.get(s.get("processID"), {}) if isinstance(processes, dict) else {}
            ptags = _tags(proc.get("tags")) if isinstance(proc, dict) else {}
            refs = [r for r in s.get("references") or [] if isinstance(r, dict)]
            parent = next((r.get("spanID") for r in refs if r.get("refType") == "CHILD_OF"), None)
            parent = parent or next((r.get("spanID") for r in refs), None) or s.get("parentSpanID")
            role = tags.get("workbench.role") or KIND_ROLE.get(str(tags.get("span.kind", "")).lower(), "app")
            error = tags.get("error")
            out.append(
                {
                    "trace_id": s.get("traceID") or trace.get("traceID"),
                    "span_id": s.get("spanID"),
                    "parent_id": parent,
                    "service": (proc.get("serviceName") if isinstance(proc, dict) else "") or "",
                    "version": ptags.get("service.version") or tags.get("service.version") or "",
                    "role": role,
                    "name": s.get("operationName") or "",
                    "start_us": s.get("startTime"),
                    "duration_us": s.get("duration"),
                    "status": tags.get("http.status_code") or tags.get("http.response.status_code"),
                    "error": error is True or str(error).lower() == "true",
                    "upstream_cluster": tags.get("upstream_cluster") or "",
                    "peer": tags.get("peer.service") or "",
                    "request_id": tags.get("guid:x-request-id") or "",
                }
            )
    return out


def _tag(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"key": key, "type": "bool", "value": value}
    if isinstance(value, int):
        return {"key": key, "type": "int64", "value": value}
    return {"key": key, "type": "string", "value": str(value)}


def to_json(spans: pa.Table) -> dict[str, Any]:
    """A run's spans as Jaeger UI JSON (``{"data": [traces]}``; one process per service and version)."""
    traces: dict[str, dict[str, Any]] = {}
    for r in spans.to_pylist():
        t = traces.setdefault(r["trace_id"], {"traceID": r["trace_id"], "spans": [], "processes": {},
                                              "warnings": None, "_pids": {}})  # fmt: skip
        key = (r["service"], r["version"])
        pid = t["_pids"].get(key)
        if pid is None:
            pid = t["_pids"][key] = f"p{len(t['_pids']) + 1}"
            ptags = [_tag("service.version", r["version"])] if r["version"] else []
            t["processes"][pid] = {"serviceName": r["service"], "tags": ptags}
        kind = "client" if r["role"] == "client" else "server"
        tags = [
            _tag("span.kind", kind),
            _tag("workbench.role", r["role"]),
            _tag("http.status_code", int(r["status"])),
        ]
        if r["error"]:
            tags.append(_tag("error", True))
        for key2, col in (("upstream_cluster", "upstream_cluster"), ("peer.service", "peer"),
                          ("guid:x-request-id", "request_id")):  # fmt: skip
            if r[col]:
                tags.append(_tag(key2, r[col]))
        refs = (
            [{"refType": "CHILD_OF", "traceID": r["trace_id"], "spanID": r["parent_id"]}]
            if r["parent_id"]
            else []
        )
        t["spans"].append(
            {
                "traceID": r["trace_id"],
                "spanID": r["span_id"],
                "flags": 1,
                "operationName": r["name"] or r["role"],
                "references": refs,
                "startTime": int(r["start_us"]),
                "duration": int(r["duration_us"]),
                "tags": tags,
                "logs": [],
                "processID": pid,
                "warnings": None,
            }
        )
    for t in traces.values():
        del t["_pids"]
    return {"data": list(traces.values()), "total": 0, "limit": 0, "offset": 0, "errors": None}


class JaegerClient:
    """Jaeger's HTTP query API at ``url`` (e.g. ``http://127.0.0.1:16686``, a port-forward)."""

    def __init__(self, url: str, timeout: float = 10.0):
        self.url, self.timeout = url.rstrip("/"), timeout

    def services(self) -> list[str]:
        doc = get_json(self.url, "/api/services", None, "Jaeger services", self.timeout)
        data = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(data, list):
            raise TraceSourceError("Jaeger services: the answer has no 'data' list")
        return [str(x) for x in data]

    def search(
        self, service: str, start_us: int, end_us: int, limit: int = 100, operation: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """Raw span records of up to ``limit`` traces of ``service`` in [start, end] (epoch µs)."""
        params: dict[str, Any] = {
            "service": service,
            "start": int(start_us),
            "end": int(end_us),
            "limit": int(limit),
        }
        if operation:
            params["operation"] = operation
        if tags:
            params["tags"] = json.dumps(dict(tags), separators=(",", ":"))
        doc = get_json(self.url, "/api/traces", params, f"Jaeger traces of {service}", self.timeout)
        return self._records(doc, f"Jaeger traces of {service}")

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        doc = get_json(self.url, f"/api/traces/{trace_id}", None, f"Jaeger trace {trace_id}", self.timeout)
        return self._records(doc, f"Jaeger trace {trace_id}")

    @staticmethod
    def _records(doc: Any, what: str) -> list[dict[str, Any]]:
        if isinstance(doc, dict) and doc.get("errors"):
            msgs = "; ".join(str(e.get("msg", e)) if isinstance(e, dict) else str(e) for e in doc["errors"])
            if not doc.get("data"):
                raise TraceSourceError(f"{what}: Jaeger answered errors: {msgs}")
        try:
            return records(doc)
        except SpanFileError as exc:
            raise TraceSourceError(f"{what}: {exc}") from None
