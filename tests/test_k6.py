"""``workbench.load.k6``: the real k6 binary against a real local HTTP server, no mocks."""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import psutil
import pytest
from aiohttp import web

from workbench.backends.base import LoadTarget
from workbench.load.k6 import render_script, run_k6
from workbench.load.results import LoadProfile
from workbench.tools import find_binary

K6_DEFAULT_API_PORT = 6565


@dataclass
class Server:
    """A tiny aiohttp app in a thread: random ``x-version``, optional 503s, delay, header echo."""

    url: str = ""
    versions: tuple[str, ...] = ("v1", "v2")
    error_share: float = 0.0
    delay_s: float = 0.0
    echo_header: str | None = None  # answer with this request header's value as x-version
    requests: int = 0
    errors: int = 0
    headers_seen: list[dict[str, str]] = field(default_factory=list)  # lower-case names

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        self.headers_seen.append({k.lower(): v for k, v in request.headers.items()})
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.echo_header is not None:
            version = request.headers.get(self.echo_header, "none")
        else:
            version = random.choice(self.versions)
        if random.random() < self.error_share:
            self.errors += 1
            return web.Response(status=503, text="unavailable", headers={"x-version": version})
        return web.Response(text="ok", headers={"x-version": version})


def _k6_children() -> list[psutil.Process]:
    """k6 processes started (directly or not) by this test process."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.name() == "k6":
                found.append(proc)
        except psutil.NoSuchProcess:
            continue
    return found


def _binomial_ok(k: int, n: int, p: float, z: float = 5.0) -> bool:
    """``k`` successes of ``n`` are within ``z`` standard deviations of Binomial(n, p)."""
    return abs(k - n * p) <= z * math.sqrt(n * p * (1 - p))


@pytest.fixture(autouse=True)
def _no_k6_left() -> Iterator[None]:
    """No k6 process may outlive a test."""
    yield
    assert _k6_children() == []


@pytest.fixture
def server() -> Iterator[Server]:
    """The test server on 127.0.0.1 at a free port, stopped at teardown."""
    if find_binary("k6") is None:
        pytest.skip("k6 is not installed")
    state = Server()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", state.handle)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    loop.run_until_complete(web.SockSite(runner, sock).start())
    state.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def _target(server: Server, headers: dict[str, str] | None = None) -> LoadTarget:
    return LoadTarget(urls=(server.url,), headers=headers or {}, service="checkout")


def _options(script: str) -> dict:
    """The JSON ``options`` object of a rendered script."""
    match = re.search(r"export const options = (\{.*?\n\});", script, re.S)
    assert match, script
    return json.loads(match.group(1))


# --- the script ---------------------------------------------------------------------------------


def test_script_open_model_scenarios() -> None:
    profile = LoadProfile(rps=200, connections=4, duration_s=3, warmup_s=1)
    script = render_script(profile, LoadTarget(urls=("http://a:1/", "http://b:2"), headers={"host": "x"}))
    scenarios = _options(script)["scenarios"]
    assert list(scenarios) == ["warmup", "measure"]
    for sc in scenarios.values():
        assert sc["executor"] == "constant-arrival-rate"
        assert (sc["rate"], sc["timeUnit"]) == (200, "1s")
        assert sc["preAllocatedVUs"] == sc["maxVUs"] == 4
    assert scenarios["measure"]["startTime"] == "1000ms" and scenarios["measure"]["duration"] == "3000ms"
    assert _options(script)["discardResponseBodies"] is True
    assert '"http://a:1/"' in script and '"http://b:2/"' in script and '"host": "x"' in script


def test_script_closed_model_and_fractional_rate() -> None:
    one = LoadTarget(urls=("http://a",))
    closed = LoadProfile(rps=None, connections=3, duration_s=2, model="closed")
    scenarios = _options(render_script(closed, one))["scenarios"]
    assert list(scenarios) == ["measure"]
    assert scenarios["measure"]["executor"] == "constant-vus" and scenarios["measure"]["vus"] == 3
    slow = LoadProfile(rps=2.5, connections=1, duration_s=2)
    measure = _options(render_script(slow, one))["scenarios"]["measure"]
    assert (measure["rate"], measure["timeUnit"]) == (2500, "1000s")


def test_script_needs_urls_and_k6_durations() -> None:
    with pytest.raises(ValueError, match="no URLs"):
        render_script(LoadProfile(rps=1, connections=1, duration_s=1), LoadTarget(urls=()))
    short = (
        LoadProfile(rps=1, connections=1, duration_s=0.5),
        LoadProfile(rps=1, connections=1, duration_s=2, warmup_s=0.5),
    )
    for profile in short:
        with pytest.raises(ValueError, match="at least 1 s"):
            render_script(profile, LoadTarget(urls=("http://a",)))


# --- real runs -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_open_model_measured_phase(server: Server, tmp_path: Path) -> None:
    api_ports: set[tuple[str, int]] = set()

    def watch() -> None:  # the REST API listens on 127.0.0.1, not on k6's default port
        for proc in _k6_children():
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    api_ports.add((conn.laddr.ip, conn.laddr.port))

    profile = LoadProfile(rps=200, connections=4, duration_s=3, warmup_s=1)
    res = run_k6(profile, _target(server), tmp_path, labels={"arm": "a"}, on_poll=watch, poll_interval=0.2)

    assert api_ports and all(ip == "127.0.0.1" and port != K6_DEFAULT_API_PORT for ip, port in api_ports)
    s = res.samples
    assert 540 <= res.count <= 660
    assert server.requests >= res.count + 150  # the ~200 warm-up requests are not in the samples
    start, end = pd.Timestamp(res.meta["start"]), pd.Timestamp(res.meta["end"])
    assert str(s["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert s["timestamp"].between(start, end).all()
    assert s["timestamp"].min() - start < pd.Timedelta("100ms")
    assert pd.Timedelta("3s") <= end - start < pd.Timedelta("3.5s")
    assert set(s["variant"]) == {"v1", "v2"}
    assert _binomial_ok(int((s["variant"] == "v1").sum()), res.count, 0.5)
    assert (s["latency_ms"] > 0).all() and (s["status"] == 200).all() and not s["tagged"].any()
    # Nothing to drop at this rate; allow a rare straggler on a loaded shared machine (< 1 %).
    assert res.meta["dropped_iterations"] <= 6 and res.summary()["dropped"] == res.meta["dropped_iterations"]
    meta = res.meta
    assert meta["generator"] == "k6" and re.fullmatch(r"\d+\.\d+\.\d+", meta["generator_version"])
    assert (meta["model"], meta["rps"], meta["connections"]) == ("open", 200, 4)
    assert (meta["duration_s"], meta["warmup_s"], meta["path"]) == (3, 1, "/")
    assert meta["target"] == {"service": "checkout", "urls": [server.url]}
    assert meta["requests_total"] == res.count and meta["arm"] == "a"
    assert (tmp_path / "script.js").is_file() and (tmp_path / "k6.log").is_file()


@pytest.mark.slow
def test_overloaded_open_model_drops_iterations(server: Server, tmp_path: Path) -> None:
    server.delay_s = 0.02
    res = run_k6(LoadProfile(rps=500, connections=1, duration_s=2), _target(server), tmp_path)
    assert res.meta["dropped_iterations"] > 300
    assert 0 < res.count <= 2 * 50 + 10  # one connection, 20 ms each
    assert res.count + res.meta["dropped_iterations"] == pytest.approx(1000, abs=20)


@pytest.mark.slow
def test_closed_model(server: Server, tmp_path: Path) -> None:
    profile = LoadProfile(rps=None, connections=2, duration_s=1, warmup_s=1, model="closed")
    res = run_k6(profile, _target(server), tmp_path)
    assert res.count > 0 and res.meta["rps"] is None and res.meta["model"] == "closed"
    assert res.meta["dropped_iterations"] == 0
    assert res.samples["timestamp"].min() >= pd.Timestamp(res.meta["start"])


@pytest.mark.slow
def test_error_statuses(server: Server, tmp_path: Path) -> None:
    server.error_share = 0.3
    res = run_k6(LoadProfile(rps=200, connections=4, duration_s=2), _target(server), tmp_path)
    assert set(res.samples["status"]) == {200, 503}
    assert int((res.samples["status"] == 503).sum()) == server.errors  # no warm-up: every request counted
    assert _binomial_ok(server.errors, res.count, 0.3)
    assert res.summary()["error_pct"] == pytest.approx(100 * server.errors / res.count)


@pytest.mark.slow
def test_tagged_share_and_headers(server: Server, tmp_path: Path) -> None:
    server.echo_header = "x-variant"
    profile = LoadProfile(
        rps=200, connections=4, duration_s=2, headers={"x-test": "1"},
        tagged_percent=50, tagged_headers={"x-variant": "b"},
    )  # fmt: skip
    res = run_k6(profile, _target(server, headers={"x-target": "t"}), tmp_path)
    s = res.samples
    seen = sum(h.get("x-variant") == "b" for h in server.headers_seen)
    assert seen == int(s["tagged"].sum()) and _binomial_ok(seen, res.count, 0.5)
    assert ((s["variant"] == "b") == s["tagged"]).all()  # per request: tagged iff the server saw it
    assert all(h.get("x-test") == "1" and h.get("x-target") == "t" for h in server.headers_seen)


def _raise_after(seconds: float, exc: BaseException, pids: list[int]) -> Callable[[], None]:
    t0 = time.monotonic()

    def poll() -> None:
        pids.extend(p.pid for p in _k6_children())
        if time.monotonic() - t0 > seconds:
            raise exc

    return poll


@pytest.mark.slow
@pytest.mark.parametrize("exc", [RuntimeError("sidecar died"), KeyboardInterrupt()])
def test_on_poll_error_stops_k6(server: Server, tmp_path: Path, exc: BaseException) -> None:
    pids: list[int] = []
    t0 = time.monotonic()
    with pytest.raises(type(exc)) as info:
        run_k6(
            LoadProfile(rps=50, connections=2, duration_s=20), _target(server), tmp_path,
            on_poll=_raise_after(1.0, exc, pids), poll_interval=0.2,
        )  # fmt: skip
    assert info.value is exc
    assert time.monotonic() - t0 < 6
    assert pids and not any(psutil.pid_exists(pid) for pid in set(pids))
    assert _k6_children() == []


@pytest.mark.slow
def test_failing_k6_names_k6_and_status(tmp_path: Path) -> None:
    if find_binary("k6") is None:
        pytest.skip("k6 is not installed")
    target = LoadTarget(urls=("ftp://127.0.0.1:1",))
    with pytest.raises(RuntimeError, match=r"k6 exited with status 107") as info:
        run_k6(LoadProfile(rps=10, connections=1, duration_s=1), target, tmp_path)
    assert "target URL must be http(s)" in str(info.value)
