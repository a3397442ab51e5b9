"""Grafana Tempo's HTTP API: search traces, then fetch each one (OTLP JSON) → raw span records.

- ``GET /api/search?tags=service.name%3D<service>&start=<s>&end=<s>&limit=<n>``: start and end in
  epoch seconds, ``tags`` in logfmt; answers ``{"traces": [{"traceID", "rootServiceName",
  "startTimeUnixNano", "durationMs"}, ...]}``.
- ``GET /api/traces/<traceID>``: the trace as OTLP JSON (``batches`` in Tempo 1.x/2.x,
  ``resourceSpans`` or ``{"trace": {"resourceSpans"}}`` in later ones; ids base64 or hex), read by
  ``otlp.records_from_json``.
"""

from __future__ import annotations

from typing import Any

from workbench.traces import otlp
from workbench.traces.query import TraceSourceError, get_json
from workbench.traces.spans import SpanFileError

__all__ = ["TempoClient"]


class TempoClient:
    """Tempo's query frontend at ``url`` (e.g. ``http://127.0.0.1:3200``, a port-forward)."""

    def __init__(self, url: str, timeout: float = 10.0):
        self.url, self.timeout = url.rstrip("/"), timeout

    def search_ids(self, service: str, start_s: int, end_s: int, limit: int = 100) -> list[str]:
        """Trace ids of ``service`` that started in [start, end] (epoch seconds)."""
        params = {
            "tags": f"service.name={service}",
            "start": int(start_s),
            "end": int(end_s),
            "limit": int(limit),
        }
        doc = get_json(self.url, "/api/search", params, f"Tempo search for {service}", self.timeout)
        traces = doc.get("traces") if isinstance(doc, dict) else None
        if traces is None:
            traces = []
        if not isinstance(traces, list):
            raise TraceSourceError(f"Tempo search for {service}: 'traces' is not a list")
        ids = [str(t["traceID"]) for t in traces if isinstance(t, dict) and t.get("traceID")]
        return ids[:limit]

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        """Raw span records of one trace."""
        doc = get_json(self.url, f"/api/traces/{trace_id}", None, f"Tempo trace {trace_id}", self.timeout)
        try:
            return otlp.records_from_json(doc)
        except SpanFileError as exc:
            raise TraceSourceError(f"Tempo trace {trace_id}: {exc}") from None

    def search(self, service: str, start_us: int, end_us: int, limit: int = 100) -> list[dict[str, Any]]:
        """Raw span records of up to ``limit`` traces of ``service`` in [start, end] (epoch µs)."""
        out: list[dict[str, Any]] = []
        for trace_id in self.search_ids(service, start_us // 1_000_000, -(-end_us // 1_000_000), limit):
            out += self.trace(trace_id)
        return out
