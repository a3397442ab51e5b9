"""One version of one demo service: a small aiohttp process with a known, adjustable behaviour.

Run as ``python -m workbench.backends.local.app SPEC.json``. Each request waits a lognormal
service time, calls its downstream services concurrently, and answers with ``x-version`` naming
the version. ``/metrics`` (Prometheus), ``/healthz``, and ``/admin/behaviour`` (GET; PUT a JSON
patch) change delay, error rate or payload while it runs, for experiments with a known effect.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import ValidationError

from workbench.backends.local.topology import Behaviour

CALLER_HEADER = "x-workbench-caller"
VERSION_HEADER = "x-version"
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

    async def handle(self, request: web.Request) -> web.Response:
        t0 = time.perf_counter()
        wait = self._service_time_s()
        if wait:
            await asyncio.sleep(wait)
        self.service_time.labels(self.service, self.version).observe(time.perf_counter() - t0)
        status = 200
        failed = ""
        if self.downstreams:
            request_id = request.headers.get("x-request-id", "")
            results = await asyncio.gather(*(self._call(name, request_id) for name in self.downstreams))
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
        body = b"x" * self.behaviour.payload_bytes if status == 200 else b"unavailable\n"
        return web.Response(status=status, body=body, headers=headers)

    async def _call(self, callee: str, request_id: str) -> int:
        target = self.downstreams[callee]
        url = self.rng.choice(target["urls"])
        headers = {"host": target["host"], CALLER_HEADER: self.service}
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

    async def on_startup(self, _: web.Application) -> None:
        self.session = ClientSession(
            connector=TCPConnector(limit=0, force_close=False),
            timeout=ClientTimeout(total=30),
            auto_decompress=False,
        )

    async def on_cleanup(self, _: web.Application) -> None:
        if self.session is not None:
            await self.session.close()


def make_app(spec: dict[str, Any]) -> web.Application:
    svc = DemoService(spec)
    app = web.Application()
    app.router.add_get("/healthz", svc.health)
    app.router.add_get("/metrics", svc.metrics)
    app.router.add_get("/admin/behaviour", svc.get_behaviour)
    app.router.add_put("/admin/behaviour", svc.put_behaviour)
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
