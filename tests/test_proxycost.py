"""The proxies' own time per traversal (``workbench.analysis.proxycost``): from access-log lines in
Envoy's format, and on the real local mesh with a known delay injected inside one sidecar."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workbench.analysis import proxycost
from workbench.analysis.localize import AccessLogTail, parse_lines
from workbench.load.results import LoadResult, empty_samples

T0 = 1_700_000_000.0


def _line(start: float, duration_us: int, upstream_us: int | None, status: int = 200, cluster: str = "",
          caller: str = "", rid: str = "a", new_cx: bool = False, version: str = "v1") -> str:  # fmt: skip
    """One access-log line as the local mesh's Envoys write it (JSON, µs durations)."""
    own = duration_us - (upstream_us or 0)
    entry = {
        "start_time": f"{start:.6f}", "duration_us": duration_us, "upstream_us": upstream_us,
        "status": status,
        "request_us": own // 2 if upstream_us is not None else None, "response_us": own - own // 2,
        "cx_after_us": 5 if new_cx else -40_000, "connect_us": 60, "handshake_us": None, "flags": "-",
        "upstream_cluster": cluster, "request_id": rid, "caller": caller, "version": version, "authority": "",
    }  # fmt: skip
    return json.dumps(entry)


def _fanout(rid: str = "a", t: float = T0) -> dict[str, list[str]]:
    """loadgen -> frontend, which calls catalog (slow) and reviews (fast) at once."""
    return {
        "loadgen-outbound": [_line(t, 10_000, 9_800, cluster="outbound|frontend|v1", rid=rid, new_cx=True)],
        "frontend-v1-inbound": [_line(t + 0.0001, 9_700, 9_550, caller="loadgen", rid=rid)],
        "frontend-v1-outbound": [
            _line(t + 0.0003, 6_000, 5_700, cluster="outbound|catalog|v1", caller="frontend", rid=rid),
            _line(t + 0.0003, 3_000, 2_900, cluster="outbound|reviews|v1", caller="frontend", rid=rid),
        ],
        "catalog-v1-inbound": [_line(t + 0.0005, 5_500, 5_380, caller="frontend", rid=rid)],
        "reviews-v1-inbound": [_line(t + 0.0005, 2_800, 2_700, caller="frontend", rid=rid)],
    }


def test_own_time_is_duration_minus_upstream_per_role() -> None:
    t = proxycost.traversals(parse_lines(_fanout()), T0 - 1, T0 + 1)
    own = dict(zip(t["sidecar"] + " " + t["destination"], t["own_ms"], strict=True))
    assert own["loadgen-outbound frontend"] == pytest.approx(0.2)
    assert own["frontend-v1-outbound catalog"] == pytest.approx(0.3)
    assert own["catalog-v1-inbound catalog"] == pytest.approx(0.12)
    roles = dict(zip(t["sidecar"], t["role"], strict=True))
    assert roles["loadgen-outbound"] == "client outbound" and roles["reviews-v1-inbound"] == "server inbound"
    assert proxycost.role_of("istio-ingressgateway", "outbound") == "gateway"
    cores = {"envoy loadgen-outbound": 0.01, "envoy catalog-v1-inbound": 0.02}
    cost = proxycost.point_cost(t, requests=1, seconds=1.0, process_cores=cores)
    by = cost.set_index("role")
    assert by.loc["client outbound", "per_request"] == 3 and by.loc["server inbound", "per_request"] == 3
    assert by.loc[proxycost.ALL, "traversals"] == 6
    assert by.loc["client outbound", "own_p50_us"] == pytest.approx(200)  # of 0.2, 0.3, 0.1 ms
    assert by.loc["client outbound", "new_connection_pct"] == pytest.approx(100 / 3)
    assert by.loc["client outbound", "connect_p50_us"] == pytest.approx(60)
    # 0.01 cores for 3 traversals/s: 3.33 vCPU per 1000 traversals/s through the proxy
    assert by.loc["client outbound", "vcpu_per_1000_traversals"] == pytest.approx(0.01 / 0.003)


def test_critical_path_follows_the_slowest_child() -> None:
    """The request waits for catalog (6 ms), not reviews (3 ms): only catalog's proxies count."""
    t = proxycost.traversals(parse_lines(_fanout()), T0 - 1, T0 + 1)
    crit = proxycost.critical_path(t).iloc[0]
    # loadgen out 0.2 + frontend in 0.15 + frontend out (catalog) 0.3 + catalog in 0.12
    assert crit["proxy_ms"] == pytest.approx(0.2 + 0.15 + 0.3 + 0.12)
    assert crit["traversals_critical"] == 4 and crit["traversals"] == 6
    assert crit["own_total_ms"] == pytest.approx(0.2 + 0.15 + 0.3 + 0.1 + 0.12 + 0.1)


def test_a_local_reply_is_counted_apart_and_the_window_selects_requests() -> None:
    raw = _fanout("a")
    raw["reviews-v1-inbound"].append(_line(T0 + 0.2, 80, None, status=403, caller="frontend", rid="b"))
    late = _fanout("c", T0 + 5.0)  # a request of a later point
    for name, lines in late.items():
        raw.setdefault(name, []).extend(lines)
    t = proxycost.traversals(parse_lines(raw), T0 - 1, T0 + 1)
    assert set(t["request"].unique()) == {0, 1} and len(t) == 7
    denied = t[t["status"] == 403].iloc[0]
    assert not denied["forwarded"] and math.isnan(denied["own_ms"])
    cost = proxycost.point_cost(t, requests=2, seconds=1.0).set_index("role")
    assert cost.loc["server inbound", "local_replies"] == 1 and cost.loc["server inbound", "traversals"] == 3


def test_serveronly_links_calls_by_the_caller_header() -> None:
    raw = {
        "frontend-v1-inbound": [_line(T0, 9_000, 8_800, caller="loadgen")],
        "catalog-v1-inbound": [_line(T0 + 0.001, 5_000, 4_900, caller="frontend")],
        "reviews-v1-inbound": [_line(T0 + 0.001, 2_000, 1_950, caller="frontend")],
    }
    crit = proxycost.critical_path(proxycost.traversals(parse_lines(raw), T0 - 1, T0 + 1)).iloc[0]
    assert crit["proxy_ms"] == pytest.approx(0.2 + 0.1) and crit["traversals_critical"] == 2


def test_cpu_shares_name_the_workbench_processes_and_the_rest_of_the_host() -> None:
    meta = {
        "host": {"host_cpu_pct": 50.0, "cores": 2, "loadgen_cpu_cores": 0.3,
                 "process_cores": {"prometheus": 0.05, "envoy pricing-v1-inbound": 0.2,
                                   "envoy ratings-v1-inbound": 0.01, "app pricing-v1": 0.2}},
        "processes": {"prometheus": {"kind": "prometheus"}, "envoy pricing-v1-inbound": {"kind": "envoy"},
                      "envoy ratings-v1-inbound": {"kind": "envoy"}, "app pricing-v1": {"kind": "app"}},
    }  # fmt: skip
    shares = proxycost.cpu_shares(LoadResult(meta, empty_samples()), {"pricing-v1-inbound"})
    assert shares["Prometheus (workbench)"] == pytest.approx(2.5)
    assert math.isnan(shares["process exporter (workbench)"])  # not running
    assert shares["load generator (k6)"] == pytest.approx(15) and shares[
        "sidecars on the path"
    ] == pytest.approx(10)
    assert shares["idle sidecars"] == pytest.approx(0.5) and shares["apps"] == pytest.approx(10)
    assert shares["rest of the host"] == pytest.approx(50 - 2.5 - 15 - 10 - 0.5 - 10)
    note = proxycost.observer_note(LoadResult(meta, empty_samples()))
    assert note == "workbench's own processes Prometheus 2.5 %; rest of the host 12.0 % of all cores"


def test_settled_reads_until_nothing_from_the_window_arrives(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request's entry record is written last (when its response has left) and can miss the first
    read after the load: ``settled`` reads again while records that started by the window's end keep
    arriving, and stops at the first read that brings none (only later traffic, or nothing)."""
    fan = _fanout("late", T0)
    reads = [
        parse_lines({"frontend-v1-inbound": fan["frontend-v1-inbound"]}),
        parse_lines({"frontend-v1-outbound": fan["frontend-v1-outbound"]}),
        parse_lines({"loadgen-outbound": [*fan["loadgen-outbound"], _line(T0 + 5, 1000, 900, rid="next")]}),
        parse_lines({"loadgen-outbound": [_line(T0 + 6, 1000, 900, rid="after")]}),  # later traffic only
        parse_lines({"catalog-v1-inbound": fan["catalog-v1-inbound"]}),  # never read: the wait ended
    ]

    class Scripted:
        def read(self) -> pd.DataFrame:
            return reads.pop(0)

    waits: list[float] = []
    monkeypatch.setattr(proxycost.time, "sleep", waits.append)
    got = proxycost.settled(Scripted(), end=T0 + 1)  # type: ignore[arg-type]
    assert len(reads) == 1 and waits == [proxycost.FLUSH_S] * 3
    t = proxycost.traversals(got, T0 - 1, T0 + 1)
    assert sorted(t["sidecar"]) == ["frontend-v1-inbound", "frontend-v1-outbound", "frontend-v1-outbound",
                                    "loadgen-outbound"]  # fmt: skip
    # a read with nothing at all ends the wait too; the limit bounds it when records never stop
    reads[:] = [parse_lines({}), parse_lines({}), parse_lines({})]
    assert not len(proxycost.settled(Scripted(), end=T0 + 1)) and len(reads) == 1  # type: ignore[arg-type]

    class Endless:
        def read(self) -> pd.DataFrame:
            return parse_lines({"frontend-v1-inbound": fan["frontend-v1-inbound"]})

    clock = iter(np.arange(0.0, 100.0, 1.0))
    monkeypatch.setattr(proxycost.time, "monotonic", lambda: float(next(clock)))
    assert len(proxycost.settled(Endless(), end=T0 + 1, limit_s=3.0)) == 3  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# On the real local mesh


def _own_by_sidecar(mesh: object, tail: AccessLogTail, rps: float) -> pd.Series:
    """The median own time per sidecar (ms) over a short load point on pricing."""
    from workbench.load.results import LoadProfile

    tail.skip()
    result = mesh.run_load("pricing", LoadProfile(rps=rps, connections=4, duration_s=6, warmup_s=1))  # type: ignore[attr-defined]
    start, end = proxycost.measured_window(result)
    time.sleep(max(0.0, end + proxycost.FLUSH_S - time.time()))
    t = proxycost.traversals(proxycost.settled(tail, end), start, end)
    return t[t["forwarded"]].groupby("sidecar")["own_ms"].median()


class _TimerLateness:
    """How late a 2 ms timer fires on this host while the block runs: a thread sleeps 2 ms over
    and over and records the overshoot (median, ms). A sidecar-free measure of what a timer such
    as Envoy's fault delay delivers beyond its setting at the same time."""

    def __init__(self) -> None:
        import threading

        self.overshoot: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._probe, daemon=True)

    def _probe(self) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            time.sleep(0.002)
            self.overshoot.append((time.perf_counter() - t0) * 1000.0 - 2.0)

    def __enter__(self) -> _TimerLateness:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def median_ms(self) -> float:
        return float(np.median(self.overshoot))


@pytest.mark.slow
def test_a_fault_delay_inside_one_sidecar_shows_up_in_its_own_time_only(tmp_path: Path) -> None:
    """Envoy's fault filter delays 2 ms at 100 % inside pricing's inbound sidecar: its own time
    rises by the delay delivered (±10 %); the load generator's sidecar's own time (whose upstream
    now includes the delay) stays as it was.

    Envoy's delay is a timer: it never fires early, and it fires late by the host's wake-up time.
    The delay delivered is the 2 ms plus that lateness, measured at the same time by a 2 ms timer
    outside the mesh (about 0.1 ms on an idle host; one CI-equivalent run beside other lanes saw
    +2.2 ms of own time, on the edge of ±10 % around the bare 2 ms)."""
    from workbench.backends.local import LocalMesh
    from workbench.backends.traffic import Fault

    with LocalMesh(mode="both", telemetry=False, run_dir=tmp_path / "mesh") as mesh:
        tail = AccessLogTail(mesh.run_dir / "envoy")
        before = _own_by_sidecar(mesh, tail, 100)
        mesh.set_fault("pricing", Fault(delay=0.002, percent=100), at="server")
        with _TimerLateness() as late:
            after = _own_by_sidecar(mesh, tail, 100)
    change = (after - before).dropna()
    delivered = 2.0 + late.median_ms
    figures = {**change.to_dict(), "delay delivered": delivered}
    assert set(change.index) == {"loadgen-outbound", "pricing-v1-inbound"}
    assert change["pricing-v1-inbound"] == pytest.approx(delivered, rel=0.10), figures
    assert abs(change["loadgen-outbound"]) < 0.2, figures
    assert np.isfinite(before).all() and (before > 0).all()


def test_the_cpu_sampler_sees_a_busy_process_and_the_host() -> None:
    """A child burning 0.8 s of CPU: the sampler's cores x seconds over its life is that CPU time
    (as the kernel accounts it to the parent after the wait), and the host was at least that busy."""
    import resource
    import subprocess
    import sys

    from workbench.load.hostcpu import CpuSampler

    spin = "import time\nwhile time.process_time() < 0.8: pass\ntime.sleep(0.3)\n"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with CpuSampler(interval_s=0.05) as sampler:
        start = time.time()
        proc = subprocess.Popen([sys.executable, "-c", spin])
        sampler.watch("spin", proc.pid)
        proc.wait()
        end = time.time()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    usage = sampler.usage(start, end)
    assert usage.processes["spin"] * usage.seconds == pytest.approx(used, abs=0.1)
    assert usage.host_pct / 100 * usage.cores * usage.seconds >= 0.9 * usage.processes["spin"] * usage.seconds
    assert math.isnan(sampler.usage(end + 100, end + 200).host_pct)  # outside the sampled span


def test_the_headline_says_proxy_in_the_ambient_modes_and_sidecar_otherwise() -> None:
    def group(mode: str) -> pd.DataFrame:
        return pd.DataFrame([{
            "mode": mode, "role": proxycost.ALL, "own_p50_us": 248.0, "own_p50_ci_low": 213.0,
            "own_p50_ci_high": 283.0, "own_p50_note": "", "per_request": 10.0, "trials": 3,
        }])  # fmt: skip

    assert proxycost.sentence(group("both-mtls"), "both-mtls").startswith(
        "each sidecar traversal adds 248 µs [213, 283] p50 of the proxy's own time (both-mtls, 10 traversals"
    )
    ambient = proxycost.sentence(group("ambient-waypoint"), "ambient-waypoint")
    assert ambient.startswith("each proxy traversal adds 248 µs [213, 283]") and ambient.endswith("3 trials)")
