"""The local mesh's span receiver: OTLP/HTTP and Zipkin v2 on 127.0.0.1, spans stored as Parquet.

Run as ``python -m workbench.traces.receiver DIR PORT [--sidecars FILE] [--queue N] [--flush S]``.

- ``POST /v1/traces``: OTLP/HTTP, protobuf (what Envoy's OpenTelemetry tracer and the demo apps
  send) or JSON; answers 200 with an empty ``ExportTraceServiceResponse``.
- ``POST /api/v2/spans``: Zipkin v2 JSON (Envoy's Zipkin tracer); answers 202.
- ``GET /stats`` (JSON) and ``GET /metrics`` (Prometheus): requests and spans received, dropped,
  invalid and written; ``GET /healthz``.

It never blocks Envoy: a handler only puts the raw body on a bounded queue and answers at once;
one writer thread decodes (``otlp``/``zipkin``), validates (``spans.table``) and writes a part
file ``DIR/part-<seq>.parquet`` about every ``--flush`` seconds (atomically, so a reader never
sees half a file). When the queue is full the body is dropped and its spans are counted as
``dropped_spans`` (never silently). ``DIR/receiver.json`` holds the same counters as ``/stats``
after every flush, so a run's report can say what was lost after the mesh stopped.
``--sidecars``: JSON ``{sidecar name: {service, version, direction}}`` resolving Envoy's
``node_id`` tag.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from aiohttp import web

from workbench.traces import otlp, spans, zipkin

__all__ = ["Receiver", "main"]

OTLP_PATH = "/v1/traces"
ZIPKIN_PATH = "/api/v2/spans"
_STOP = object()


class Receiver:
    """Counters, the bounded queue and the writer thread; see the module docstring."""

    def __init__(
        self,
        directory: Path,
        sidecars: dict[str, dict[str, str]] | None = None,
        queue_size: int = 2000,
        flush_s: float = 1.0,
    ):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.sidecars = sidecars or {}
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self.flush_s = flush_s
        self.counts: Counter[str] = Counter()
        self.invalid: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._seq = 0
        self._thread = threading.Thread(target=self._write_loop, name="span-writer", daemon=True)

    # ---- handlers (event loop): never decode, never wait

    def offer(self, fmt: str, content_type: str, body: bytes) -> None:
        with self._lock:
            self.counts["requests"] += 1
        try:
            self.queue.put_nowait((fmt, content_type, body))
        except queue.Full:
            n = otlp.count_spans(body) if fmt == "otlp" and "json" not in content_type else _count_json(body)
            with self._lock:
                self.counts["dropped_requests"] += 1
                self.counts["dropped_spans"] += n

    def stats(self) -> dict[str, Any]:
        with self._lock:
            out = {
                k: int(self.counts.get(k, 0))
                for k in (
                    "requests",
                    "bad_requests",
                    "received_spans",
                    "dropped_requests",
                    "dropped_spans",
                    "invalid_spans",
                    "written_spans",
                    "parts",
                )
            }
        out["invalid_by_reason"] = dict(self.invalid)
        out["queue"] = self.queue.qsize()
        out["queue_size"] = self.queue.maxsize
        return out

    # ---- writer thread

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.queue.put(_STOP)  # blocking put: the writer drains what is queued first
        self._thread.join(timeout=10)

    def _write_loop(self) -> None:
        records: list[dict[str, Any]] = []
        last = time.monotonic()
        while True:
            try:
                item = self.queue.get(timeout=max(0.05, self.flush_s - (time.monotonic() - last)))
            except queue.Empty:
                item = None
            if item is _STOP:
                self._flush(records)
                return
            if item is not None:
                fmt, content_type, body = item
                try:
                    got = (
                        otlp.decode(body, content_type, self.sidecars)
                        if fmt == "otlp"
                        else zipkin.decode(body, self.sidecars)
                    )
                except spans.SpanFileError:
                    with self._lock:
                        self.counts["bad_requests"] += 1
                    got = []
                records += got
                with self._lock:
                    self.counts["received_spans"] += len(got)
            if time.monotonic() - last >= self.flush_s:
                self._flush(records)
                records = []
                last = time.monotonic()

    def _flush(self, records: list[dict[str, Any]]) -> None:
        if records:
            table, intake = spans.table(records)
            if table.num_rows:
                self._seq += 1
                spans.write(table, self.directory / f"part-{self._seq:07d}.parquet")
            with self._lock:
                self.counts["written_spans"] += table.num_rows
                self.counts["parts"] += 1 if table.num_rows else 0
                self.counts["invalid_spans"] += intake.n_dropped
                self.invalid.update(intake.dropped)
        _write_json(self.directory / "receiver.json", self.stats())


def _count_json(body: bytes) -> int:
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return 0
    if isinstance(doc, list):
        return len(doc)
    try:
        return len(otlp.records_from_json(doc))
    except spans.SpanFileError:
        return 0


def _write_json(path: Path, payload: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)


def make_app(receiver: Receiver) -> web.Application:
    async def otlp_handler(request: web.Request) -> web.Response:
        receiver.offer("otlp", request.content_type, await request.read())
        if "json" in request.content_type:
            return web.json_response({})
        return web.Response(status=200, body=b"", content_type="application/x-protobuf")

    async def zipkin_handler(request: web.Request) -> web.Response:
        receiver.offer("zipkin", request.content_type, await request.read())
        return web.Response(status=202)

    async def stats(_: web.Request) -> web.Response:
        return web.json_response(receiver.stats())

    async def metrics(_: web.Request) -> web.Response:
        s = receiver.stats()
        lines = []
        for key in ("received_spans", "dropped_spans", "invalid_spans", "written_spans", "requests",
                    "dropped_requests", "bad_requests"):  # fmt: skip
            name = f"workbench_trace_{key}_total"
            lines += [f"# TYPE {name} counter", f"{name} {s[key]}"]
        lines += ["# TYPE workbench_trace_queue gauge", f"workbench_trace_queue {s['queue']}"]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def on_cleanup(_: web.Application) -> None:
        receiver.stop()

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post(OTLP_PATH, otlp_handler)
    app.router.add_post(ZIPKIN_PATH, zipkin_handler)
    app.router.add_get("/stats", stats)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", health)
    app.on_cleanup.append(on_cleanup)
    return app


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m workbench.traces.receiver", description=__doc__.splitlines()[0]
    )
    ap.add_argument("directory", type=Path)
    ap.add_argument("port", type=int)
    ap.add_argument("--sidecars", type=Path, help="JSON: sidecar name -> service, version, direction")
    ap.add_argument("--queue", type=int, default=2000, help="export requests held before dropping")
    ap.add_argument("--flush", type=float, default=1.0, help="seconds between part files")
    args = ap.parse_args(argv)
    sidecars = json.loads(args.sidecars.read_text()) if args.sidecars else {}
    receiver = Receiver(args.directory, sidecars, args.queue, args.flush)
    receiver.start()
    web.run_app(
        make_app(receiver), host="127.0.0.1", port=args.port, access_log=None, print=None,
        handle_signals=True, shutdown_timeout=1.0,
    )  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
