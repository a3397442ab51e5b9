"""Synthetic traces shaped like the local mesh's (mode both): for tests that need known effects.

Each request: loadgen client → frontend server → frontend app, which calls catalog and reviews
concurrently (each: a client span, the callee's server span, its app span, and its own call to
pricing / ratings). App own times are lognormal around the demo's; proxies add ~0.15 ms a hop.
``delay`` adds ms to one service's own time; ``errors`` makes a share of one service's requests fail.
"""

from __future__ import annotations

import functools
import random
from typing import Any

import pyarrow as pa

from workbench.traces import spans

CALLS = {"frontend": ["catalog", "reviews"], "catalog": ["pricing"], "reviews": ["ratings"]}
OWN_MS = {"frontend": 1.0, "catalog": 2.0, "pricing": 1.0, "reviews": 2.0, "ratings": 1.0}
PROXY_US = 150


def _visit(
    rng: random.Random, out: list[dict[str, Any]], trace: str, service: str, parent: str, start: int,
    rid: str, delay: dict[str, float], errors: dict[str, float], ids: list[int],
) -> tuple[int, bool]:  # fmt: skip
    """Server span + app span (+ calls) of ``service`` starting at ``start``; (end, failed)."""

    def new_id() -> str:
        ids[0] += 1
        return format(ids[0], "016x")

    server, app = new_id(), new_id()
    own = int(1000 * (OWN_MS[service] * rng.lognormvariate(0, 0.3) + delay.get(service, 0.0)))
    app_start = start + PROXY_US // 2
    t = app_start + own // 2
    ends, failed_call = [], False
    for callee in CALLS.get(service, []):
        client = new_id()
        c_start = t + rng.randint(0, 20)
        s_end, failed = _visit(
            rng, out, trace, callee, client, c_start + PROXY_US // 2, rid, delay, errors, ids
        )
        c_end = s_end + PROXY_US // 2
        status = 503 if failed else 200
        out.append({"trace_id": trace, "span_id": client, "parent_id": app, "service": service,
                    "version": "v1", "role": "client", "start_us": c_start, "duration_us": c_end - c_start,
                    "status": status, "error": failed, "peer": callee, "request_id": rid,
                    "upstream_cluster": f"outbound|{callee}|v1"})  # fmt: skip
        ends.append(c_end)
        failed_call = failed_call or failed
    app_end = max([t, *ends]) + own - own // 2
    failed = failed_call or rng.random() < errors.get(service, 0.0)
    status = 503 if failed else 200
    out.append({"trace_id": trace, "span_id": app, "parent_id": server, "service": service, "version": "v1",
                "role": "app", "start_us": app_start, "duration_us": app_end - app_start, "status": status,
                "error": failed, "request_id": rid})  # fmt: skip
    end = app_end + PROXY_US // 2
    out.append({"trace_id": trace, "span_id": server, "parent_id": parent, "service": service,
                "version": "v1", "role": "server", "start_us": start, "duration_us": end - start,
                "status": status, "error": failed, "request_id": rid})  # fmt: skip
    return end, failed


@functools.lru_cache(maxsize=16)
def _cached(n: int, start_s: float, rps: float, seed: int, delay: tuple, errors: tuple) -> pa.Table:
    return _make(n, start_s, rps, seed, dict(delay), dict(errors))


def traces(
    n: int, start_s: float, rps: float = 200.0, seed: int = 0, delay: dict[str, float] | None = None,
    errors: dict[str, float] | None = None,
) -> pa.Table:  # fmt: skip
    """``n`` requests at ``rps`` from ``start_s`` (epoch s) as a span table (cached: immutable)."""
    frozen = [tuple(sorted((x or {}).items())) for x in (delay, errors)]
    return _cached(n, start_s, rps, seed, *frozen)


def _make(
    n: int, start_s: float, rps: float = 200.0, seed: int = 0, delay: dict[str, float] | None = None,
    errors: dict[str, float] | None = None,
) -> pa.Table:  # fmt: skip
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    ids = [seed * 10**9]
    for i in range(n):
        t0 = int((start_s + i / rps) * 1e6)
        trace = format(rng.getrandbits(128), "032x")
        rid = f"req-{seed}-{i}"
        ids[0] += 1
        root = format(ids[0], "016x")
        end, failed = _visit(
            rng, out, trace, "frontend", root, t0 + PROXY_US // 2, rid, delay or {}, errors or {}, ids
        )
        out.append({"trace_id": trace, "span_id": root, "parent_id": "", "service": "loadgen", "version": "",
                    "role": "client", "start_us": t0, "duration_us": end + PROXY_US // 2 - t0,
                    "status": 503 if failed else 200, "error": failed, "peer": "frontend",
                    "request_id": rid})  # fmt: skip
    return spans.table(out)[0]
