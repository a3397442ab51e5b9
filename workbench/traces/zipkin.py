"""Zipkin v2 JSON spans (what Envoy's Zipkin tracer posts to ``/api/v2/spans``) → raw span records.

A Zipkin v2 span: ``traceId`` (16 or 32 hex), ``id``, ``parentId``, ``name``, ``kind``
(``CLIENT``/``SERVER``/...), ``timestamp`` and ``duration`` in µs, ``localEndpoint.serviceName``,
``tags`` (string → string; Envoy's: ``node_id``, ``upstream_cluster``, ``http.status_code``,
``error``, ``guid:x-request-id``) and ``shared`` (a server span that reuses the client's id —
Envoy's ``shared_span_context``; the local mesh turns it off so every hop has its own span).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from workbench.traces.spans import SpanFileError

__all__ = ["decode", "records"]

KIND_ROLE = {"CLIENT": "client", "SERVER": "server"}


def records(doc: Any, sidecars: Mapping[str, Mapping[str, str]] | None = None) -> list[dict[str, Any]]:
    """Raw span records of a Zipkin v2 JSON list; SpanFileError when it is not a list of objects."""
    if not isinstance(doc, list):
        raise SpanFileError("not Zipkin v2 JSON: expected a list of spans")
    out = []
    for s in doc:
        if not isinstance(s, dict):
            raise SpanFileError("not Zipkin v2 JSON: a list entry is not a span object")
        tags = s.get("tags") if isinstance(s.get("tags"), dict) else {}
        local = s.get("localEndpoint") if isinstance(s.get("localEndpoint"), dict) else {}
        sidecar = (sidecars or {}).get(str(tags.get("node_id") or ""), {})
        out.append(
            {
                "trace_id": s.get("traceId"),
                "span_id": s.get("id"),
                "parent_id": s.get("parentId"),
                "service": sidecar.get("service") or local.get("serviceName") or "",
                "version": sidecar.get("version") or tags.get("service.version") or "",
                "role": tags.get("workbench.role") or KIND_ROLE.get(str(s.get("kind", "")).upper(), "app"),
                "name": s.get("name") or "",
                "start_us": s.get("timestamp"),
                "duration_us": s.get("duration"),
                "status": tags.get("http.status_code"),
                "error": "error" in tags and str(tags["error"]).lower() not in ("", "false"),
                "upstream_cluster": tags.get("upstream_cluster") or "",
                "peer": (s.get("remoteEndpoint") or {}).get("serviceName", "")
                if isinstance(s.get("remoteEndpoint"), dict)
                else "",
                "request_id": tags.get("guid:x-request-id") or "",
            }
        )
    return out


def decode(body: bytes, sidecars: Mapping[str, Mapping[str, str]] | None = None) -> list[dict[str, Any]]:
    """Raw span records of a Zipkin v2 JSON body; SpanFileError says why it cannot be read."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SpanFileError(f"Zipkin body is not JSON: {exc}") from None
    return records(doc, sidecars)
