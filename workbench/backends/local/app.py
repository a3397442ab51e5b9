"""One version of one demo service: a small aiohttp process with a known, adjustable behaviour.

Run as ``python -m workbench.backends.local.app SPEC.json``. Each request waits a lognormal
service time, calls its downstream services concurrently, and answers with ``x-version`` naming
the version. ``/metrics`` (Prometheus), ``/healthz``, and ``/admin/behaviour`` (GET; PUT a JSON
patch) change delay, error rate or payload while it runs, for experiments with a known effect.

Trace context: the app reads W3C ``traceparent`` (else B3: ``b3`` or ``x-b3-*``) from the request
and sends it on with every downstream call, with ``x-request-id``, so the sidecars' spans of one
request link into one tree. With ``tracing`` in its spec it also records its own span (role
``app``: the handler's time, a child of the incoming context; a new sampled-or-not trace when
there is none, which is how mode ``none`` is traced) and hands its own span id downstream in both
``traceparent`` and B3 headers; spans are posted as OTLP protobuf to the receiver every second
from a bounded buffer (``app_spans_dropped_total`` counts what did not fit or could not be sent).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import ValidationError

from workbench.backends.local.topology import Behaviour

CALLER_HEADER = "x-workbench-caller"
VERSION_HEADER = "x-version"
TRACE_HEADERS = ("traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid",
                 "x-b3-sampled", "x-b3-flags")  # fmt: skip
SPAN_BUFFER = 20_000  # spans held between exports; beyond it they are dropped (and counted)
# Buckets in seconds, fine below 10 ms where the demo's service times live.
BUCKETS = (
    0.0005,
    0.001,
    0.0015,
    0.002,
    0.003,
    0.004,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


@dataclass
class TraceContext:
    """The incoming trace context: trace id, the caller's span id, sampled."""

    trace_id: str
    span_id: str
    sampled: bool


def _is_hex(text: str, digits: int) -> bool:
    return len(text) == digits and all(c in "0123456789abcdef" for c in text) and text != "0" * digits


def incoming_context(headers: Any, prefer: str = "w3c") -> TraceContext | None:
    """W3C ``traceparent`` (version 00), else B3 single (``b3``) or multi (``x-b3-*``) headers;
    ``prefer="b3"`` reads B3 first. A request carries both (the apps send both), but a proxy's
    tracer rewrites only its own kind (Envoy's OpenTelemetry tracer ``traceparent``, its Zipkin
    tracer B3), so the app reads the kind its mesh's tracer writes."""
    if prefer == "b3":
        return _b3(headers) or _w3c(headers)
    return _w3c(headers) or _b3(headers)


def _w3c(headers: Any) -> TraceContext | None:
    tp = headers.get("traceparent", "").strip().lower()
    parts = tp.split("-")
    if len(parts) >= 4 and parts[0] == "00" and _is_hex(parts[1], 32) and _is_hex(parts[2], 16):
        return TraceContext(parts[1], parts[2], bool(int(parts[3][:2] or "0", 16) & 1))
    return None


def _b3(headers: Any) -> TraceContext | None:
    single = headers.get("b3", "").strip().lower().split("-")
    if len(single) >= 2:
        trace, span = single[0].rjust(32, "0"), single[1]
        if _is_hex(trace, 32) and _is_hex(span, 16):
            return TraceContext(trace, span, len(single) < 3 or single[2] in ("1", "d"))
    trace = headers.get("x-b3-traceid", "").strip().lower().rjust(32, "0")
    span = headers.get("x-b3-spanid", "").strip().lower()
    if _is_hex(trace, 32) and _is_hex(span, 16):
        return TraceContext(trace, span, headers.get("x-b3-sampled", "1") in ("1", "true") or
                            headers.get("x-b3-flags", "") == "1")  # fmt: skip
    return None


def outgoing_headers(trace_id: str, span_id: str, sampled: bool) -> dict[str, str]:
    """Trace context for a downstream call whose parent is ``span_id``: W3C and B3 (multi)."""
    return {
        "traceparent": f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}",
        "x-b3-traceid": trace_id,
        "x-b3-spanid": span_id,
        "x-b3-sampled": "1" if sampled else "0",
    }


class DemoService:
    """State and handlers of one service version."""

    def __init__(self, spec: dict[str, Any]):
        self.service: str = spec["service"]
        self.version: str = spec["version"]
        self.behaviour = Behaviour(**spec.get("behaviour", {}))
        # callee -> {"urls": [...], "host": name}; urls are picked uniformly per call.
        self.downstreams: dict[str, dict[str, Any]] = spec.get("downstreams", {})
        self.rng = random.Random(spec.get("seed"))
        self.session: ClientSession | None = None
        self.registry = CollectorRegistry()
        tracing = spec.get("tracing") or {}
        self.traces_url: str = tracing.get("url", "")  # the receiver's /v1/traces; "" = propagate only
        self.sampling: float = float(tracing.get("sampling", 100.0))
        self.prefer = "b3" if tracing.get("tracer") == "zipkin" else "w3c"  # what the sidecars rewrite
        self.spans: list[dict[str, Any]] = []
        self.spans_dropped = Counter(
            "app_spans_dropped", "App spans dropped (buffer full or export failed)", ["service", "version"],
            registry=self.registry,
        )  # fmt: skip
        labels = ["service", "version"]
        self.requests = Counter("app_requests", "Requests served", [*labels, "code"], registry=self.registry)
        self.service_time = Histogram(
            "app_service_time_seconds",
            "Own service time (without downstream calls)",
            labels,
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.duration = Histogram(
            "app_request_duration_seconds",
            "Whole request time, downstream calls included",
            labels,
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.downstream_calls = Counter(
            "app_downstream_calls",
            "Calls to downstream services",
            [*labels, "callee", "code"],
            registry=self.registry,
        )

    def _service_time_s(self) -> float:
        b = self.behaviour
        if b.service_time_ms <= 0:
            return 0.0
        return (
            b.service_time_ms / 1000.0 * math.exp(self.rng.gauss(0.0, b.sigma))
            if b.sigma
            else (b.service_time_ms / 1000.0)
        )

    def _trace(self, request: web.Request) -> tuple[dict[str, str], dict[str, Any] | None]:
        """Headers to send downstream, and this request's own span (None when not recorded)."""
        ctx = incoming_context(request.headers, self.prefer)
        if not self.traces_url:  # propagate what came in, unchanged
            return {k: v for k in TRACE_HEADERS if (v := request.headers.get(k))}, None
        if ctx is None:
            ctx = TraceContext("", "", self.rng.random() * 100 < self.sampling)
            trace_id, parent = secrets.token_hex(16), ""
        else:
            trace_id, parent = ctx.trace_id, ctx.span_id
        span_id = secrets.token_hex(8)
        span = {"trace_id": trace_id, "span_id": span_id, "parent_id": parent, "name": request.path,
                "role": "app", "start_ns": time.time_ns(), "sampled": ctx.sampled,
                "request_id": request.headers.get("x-request-id", "")}  # fmt: skip
        return outgoing_headers(trace_id, span_id, ctx.sampled), span

    def _finish(self, span: dict[str, Any] | None, status: int) -> None:
        if span is None or not span.pop("sampled"):
            return
        span.update(end_ns=time.time_ns(), status=status, error=status >= 500)
        if len(self.spans) >= SPAN_BUFFER:
            self.spans_dropped.labels(self.service, self.version).inc()
            return
        self.spans.append(span)

    async def export_spans(self) -> None:
        """Post the buffered spans to the receiver every second, until cancelled."""
        from workbench.traces.otlp import encode

        while True:
            await asyncio.sleep(1.0)
            batch, self.spans = self.spans, []
            if not batch or self.session is None:
                continue
            body = encode(self.service, self.version, batch)
            try:
                async with self.session.post(
                    self.traces_url, data=body, headers={"content-type": "application/x-protobuf"},
                    timeout=ClientTimeout(total=5),
                ) as resp:  # fmt: skip
                    await resp.read()
                    ok = resp.status < 300
            except (TimeoutError, OSError, Exception):
                ok = False
            if not ok:
                self.spans_dropped.labels(self.service, self.version).inc(len(batch))

    async def handle(self, request: web.Request) -> web.Response:
        t0 = time.perf_counter()
        trace_headers, span = self._trace(request)
        wait = self._service_time_s()
        if wait:
            await asyncio.sleep(wait)
        self.service_time.labels(self.service, self.version).observe(time.perf_counter() - t0)
        status = 200
        failed = ""
        if self.downstreams:
            request_id = request.headers.get("x-request-id", "")
            results = await asyncio.gather(
                *(self._call(name, request_id, trace_headers) for name in self.downstreams)
            )
            bad = [
                name for name, code in zip(self.downstreams, results, strict=True) if code == 0 or code >= 500
            ]
            if bad:
                status, failed = 503, ",".join(bad)
        if status == 200 and self.behaviour.error_rate and self.rng.random() < self.behaviour.error_rate:
            status = 503
        headers = {VERSION_HEADER: self.version, "x-service": self.service}
        if failed:
            headers["x-failed-dependency"] = failed
        self.requests.labels(self.service, self.version, str(status)).inc()
        self.duration.labels(self.service, self.version).observe(time.perf_counter() - t0)
        self._finish(span, status)
        body = b"x" * self.behaviour.payload_bytes if status == 200 else b"unavailable\n"
        return web.Response(status=status, body=body, headers=headers)

    async def _call(self, callee: str, request_id: str, trace_headers: dict[str, str]) -> int:
        target = self.downstreams[callee]
        url = self.rng.choice(target["urls"])
        headers = {"host": target["host"], CALLER_HEADER: self.service, **trace_headers}
        if request_id:
            headers["x-request-id"] = request_id
        assert self.session is not None
        try:
            async with self.session.get(url + "/", headers=headers) as resp:
                await resp.read()
                code = resp.status
        except (TimeoutError, OSError, Exception):
            code = 0
        self.downstream_calls.labels(self.service, self.version, callee, str(code)).inc()
        return code

    async def health(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n", headers={VERSION_HEADER: self.version})

    async def metrics(self, _: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def get_behaviour(self, _: web.Request) -> web.Response:
        return web.json_response(self.behaviour.model_dump())

    async def put_behaviour(self, request: web.Request) -> web.Response:
        try:
            patch = await request.json()
            if not isinstance(patch, dict):
                raise ValueError("expected a JSON object")
            self.behaviour = Behaviour(**{**self.behaviour.model_dump(), **patch})
        except (ValueError, ValidationError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(self.behaviour.model_dump())

    async def put_sampling(self, request: web.Request) -> web.Response:
        """``{"sampling": percent}``: the share of new traces this app starts sampled (mode none)."""
        try:
            value = float((await request.json())["sampling"])
            if not 0 <= value <= 100:
                raise ValueError("sampling must be a percentage 0-100")
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        self.sampling = value
        return web.json_response({"sampling": value})

    async def on_startup(self, _: web.Application) -> None:
        self.session = ClientSession(
            connector=TCPConnector(limit=0, force_close=False),
            timeout=ClientTimeout(total=30),
            auto_decompress=False,
        )
        if self.traces_url:
            self.exporter = asyncio.get_running_loop().create_task(self.export_spans())

    async def on_cleanup(self, _: web.Application) -> None:
        if getattr(self, "exporter", None) is not None:
            self.exporter.cancel()
        if self.session is not None:
            await self.session.close()


def make_app(spec: dict[str, Any]) -> web.Application:
    svc = DemoService(spec)
    app = web.Application()
    app.router.add_get("/healthz", svc.health)
    app.router.add_get("/metrics", svc.metrics)
    app.router.add_get("/admin/behaviour", svc.get_behaviour)
    app.router.add_put("/admin/behaviour", svc.put_behaviour)
    app.router.add_put("/admin/sampling", svc.put_sampling)
    app.router.add_route("*", "/{tail:.*}", svc.handle)
    app.on_startup.append(svc.on_startup)
    app.on_cleanup.append(svc.on_cleanup)
    return app


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        sys.exit("usage: python -m workbench.backends.local.app SPEC.json")
    spec = json.loads(Path(argv[0]).read_text())
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio also works
        pass
    web.run_app(
        make_app(spec),
        host="127.0.0.1",
        port=int(spec["port"]),
        access_log=None,
        print=None,
        handle_signals=True,
        shutdown_timeout=1.0,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
