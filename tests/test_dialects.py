"""Telemetry dialects against a real Prometheus loaded with series this test generates.

Istio-, Linkerd-, local-Envoy- and Consul-shaped counters and latency histograms with known rates,
error shares and (lognormal) latencies are written as OpenMetrics, turned into TSDB blocks by
``promtool tsdb create-blocks-from openmetrics`` and served by a real ``prometheus`` on a free
port; :func:`windows` must read back the generated numbers.
"""

from __future__ import annotations

import math
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import requests
from pytest_httpserver import HTTPServer

from workbench.metrics.dialects import (
    L4_COLUMNS,
    MAX_POINTS,
    arm,
    arm_counts,
    l4_windows,
    query_range_chunked,
    windows,
)
from workbench.metrics.histogram import Histogram
from workbench.metrics.prometheus import Prometheus, PrometheusError
from workbench.stats.compare import compare

pytestmark = pytest.mark.skipif(
    not (shutil.which("prometheus") and shutil.which("promtool")), reason="prometheus/promtool not installed"
)

SCRAPE = 15  # s between generated samples
WINDOW = 60  # s per analysis window
HOUR = 3600
NOW = math.floor(time.time() / WINDOW) * WINDOW
T0 = NOW - 80 * 60  # the rich data: T0 .. T1 (one hour), ending 20 minutes ago
T1 = T0 + HOUR
LONG0, LONG1 = NOW - 4 * HOUR, NOW - 10 * 60  # one gauge over ~4 h for the 11,000-point limit
ISTIO_LE = [0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000]
LINKERD_LE = [1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500, 1000, 2000, 3000, 4000, 5000, 10000]


@dataclass(frozen=True)
class Stream:
    """One destination version's traffic: requests per second, failed share, lognormal latency (ms)."""

    version: str
    rps: int
    error_share: float
    median_ms: float
    sigma: float


STREAMS = {
    "istio": [Stream("v1", 20, 0.02, 20.0, 0.5), Stream("v2", 6, 0.10, 40.0, 0.6)],
    "linkerd": [Stream("v1", 12, 0.05, 8.0, 0.4), Stream("v2", 4, 0.20, 60.0, 0.5)],
    "envoy": [Stream("v1", 10, 0.04, 15.0, 0.5), Stream("v2", 10, 0.0, 30.0, 0.5)],
    "consul": [Stream("v1", 8, 0.125, 12.0, 0.5), Stream("v2", 2, 0.2, 90.0, 0.4)],
    "istio-ambient": [Stream("v1", 10, 0.1, 6.0, 0.5), Stream("v2", 5, 0.0, 25.0, 0.5)],  # a waypoint's
}
# ztunnel's L4 per scrape interval and edge (ratings version): connections opened (all closed in the
# same interval), of them closed with a failure flag, bytes each way; plus a sidecar's own TCP report
L4 = {"v1": (3, 1, 4_000, 12_000), "v2": (2, 0, 1_500, 9_000)}


@dataclass
class Traffic:
    """Generated requests of one stream: per scrape interval its latencies (errors first) and errors."""

    stream: Stream
    latencies: list[np.ndarray]  # index i: requests answered in (t_i - SCRAPE, t_i]; [0] is empty
    errors: list[int]

    def window(self, start: int) -> tuple[np.ndarray, int]:
        """(latencies, errors) of the window (start, start + WINDOW]."""
        idx = [(start - T0) // SCRAPE + k for k in range(1, WINDOW // SCRAPE + 1)]
        return np.concatenate([self.latencies[i] for i in idx]), sum(self.errors[i] for i in idx)


def _traffic(stream: Stream, seed: int) -> Traffic:
    rng = np.random.default_rng(seed)
    n = stream.rps * SCRAPE
    n_err = round(n * stream.error_share)
    assert n_err == n * stream.error_share  # integer error counts: the share is exact
    lat = [np.array([])] + [
        rng.lognormal(math.log(stream.median_ms), stream.sigma, n) for _ in range((T1 - T0) // SCRAPE)
    ]
    return Traffic(stream, lat, [0] + [n_err] * (len(lat) - 1))


TRAFFIC = {
    d: [_traffic(s, seed=i * 10 + j) for j, s in enumerate(ss)] for i, (d, ss) in enumerate(STREAMS.items())
}


# ------------------------------------------------------------------------------------------------
# OpenMetrics writing


def _labels(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


class OpenMetrics:
    """Series accumulated per metric name, written grouped by name and time-ordered per series."""

    def __init__(self) -> None:
        self.series: dict[str, dict[str, list[tuple[float, float]]]] = {}

    def add(self, name: str, labels: dict[str, str], times: list[int], values: np.ndarray) -> None:
        key = _labels(labels)
        assert key not in self.series.setdefault(name, {}), (name, key)
        self.series[name][key] = list(zip(times, values.tolist(), strict=True))

    def counter(self, name: str, labels: dict[str, str], increments: np.ndarray) -> None:
        times = list(range(T0, T1 + 1, SCRAPE))
        self.add(name, labels, times, np.cumsum(increments))

    def histogram(self, family: str, labels: dict[str, str], les: list[float], lat: list[np.ndarray]) -> None:
        """Cumulative ``_bucket`` series (and ``_sum``/``_count``) of the per-scrape latencies."""
        for le in [*les, math.inf]:
            inc = np.array([float((x <= le).sum()) for x in lat])
            self.counter(f"{family}_bucket", {**labels, "le": "+Inf" if le == math.inf else f"{le:g}"}, inc)
        self.counter(f"{family}_sum", labels, np.array([float(x.sum()) for x in lat]))
        self.counter(f"{family}_count", labels, np.array([float(len(x)) for x in lat]))

    def text(self) -> str:
        lines = []
        for name, by_labels in self.series.items():
            for key, points in by_labels.items():
                lines.extend(f"{name}{key} {v:.17g} {t}" for t, v in points)
        return "\n".join([*lines, "# EOF", ""])


def _split(t: Traffic) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(error latencies, success latencies) per scrape."""
    return [x[:e] for x, e in zip(t.latencies, t.errors, strict=True)], [
        x[e:] for x, e in zip(t.latencies, t.errors, strict=True)
    ]


def _counts(lat: list[np.ndarray]) -> np.ndarray:
    return np.array([float(len(x)) for x in lat])


def _istio(om: OpenMetrics) -> None:
    for reporter in ("destination", "source"):  # both sidecars report each request
        for t in TRAFFIC["istio"]:
            v = t.stream.version
            base = {
                "reporter": reporter, "source_workload": "productpage-v1", "source_app": "productpage",
                "destination_workload": f"reviews-{v}", "destination_service_name": "reviews",
                "destination_service": "reviews.shop.svc.cluster.local", "destination_version": v,
                "connection_security_policy": "mutual_tls" if reporter == "destination" else "unknown",
            }  # fmt: skip
            for code, lat in zip(("503", "200"), _split(t), strict=True):
                labels = {**base, "response_code": code, "response_flags": "-"}
                om.counter("istio_requests_total", labels, _counts(lat))
                om.histogram("istio_request_duration_milliseconds", labels, ISTIO_LE, lat)


def _linkerd(om: OpenMetrics) -> None:
    for t in TRAFFIC["linkerd"]:
        v = t.stream.version
        inbound = {
            "direction": "inbound", "namespace": "shop", "app": "reviews", "deployment": f"reviews-{v}",
            "version": v, "pod": f"reviews-{v}-7d4b9c-x2x4z", "tls": "true",
            "client_id": "productpage.shop.serviceaccount.identity.linkerd.cluster.local",
        }  # fmt: skip
        outbound = {
            "direction": "outbound", "namespace": "shop", "app": "productpage",
            "deployment": "productpage-v1", "version": "v1", "dst_namespace": "shop",
            "dst_service": "reviews", "dst_deployment": f"reviews-{v}", "tls": "true",
        }  # fmt: skip
        for base in (inbound, outbound):
            for (cls, code), lat in zip((("failure", "503"), ("success", "200")), _split(t), strict=True):
                labels = {**base, "status_code": code, "classification": cls}
                om.counter("response_total", labels, _counts(lat))
                om.histogram("response_latency_ms", labels, LINKERD_LE, lat)


def _envoy(om: OpenMetrics, dialect: str, base_of: dict[str, dict[str, str]]) -> None:
    """Envoy cluster stats of the caller's sidecar: total, per code class, and rq_time (ms)."""
    for t in TRAFFIC[dialect]:
        base = base_of[t.stream.version]
        err, ok = _split(t)
        om.counter("envoy_cluster_upstream_rq_total", base, _counts(t.latencies))
        om.counter("envoy_cluster_upstream_rq_xx", {**base, "envoy_response_code_class": "2"}, _counts(ok))
        om.counter("envoy_cluster_upstream_rq_xx", {**base, "envoy_response_code_class": "5"}, _counts(err))
        om.histogram("envoy_cluster_upstream_rq_time", base, ISTIO_LE, t.latencies)


def _local_envoy_labels(v: str) -> dict[str, str]:
    # The local mesh's scrape-target labels plus Envoy's own cluster-name tag.
    return {
        "job": "envoy", "service": "productpage", "version": "v1", "direction": "outbound",
        "sidecar": "productpage-v1-outbound", "mesh_mode": "mtls",
        "envoy_cluster_name": f"outbound|reviews|{v}",
    }  # fmt: skip


def _consul_labels(v: str) -> dict[str, str]:
    return {
        "envoy_cluster_name": f"{v}.reviews.default.dc1.internal.11111111-2222.consul",
        "local_cluster": "frontend",
        "consul_source_service": "frontend", "consul_destination_service": "reviews",
        "consul_destination_service_subset": v, "consul_destination_namespace": "default",
        "consul_destination_datacenter": "dc1",
    }  # fmt: skip


def _ambient(om: OpenMetrics) -> None:
    """Istio ambient: the waypoint reports each request once (reporter=waypoint); ztunnel reports L4."""
    for t in TRAFFIC["istio-ambient"]:
        v = t.stream.version
        base = {
            "reporter": "waypoint", "source_workload": "reviews-v2", "destination_workload": f"ratings-{v}",
            "destination_service_name": "ratings", "destination_version": v, "response_flags": "-",
        }  # fmt: skip
        for code, lat in zip(("503", "200"), _split(t), strict=True):
            labels = {**base, "response_code": code}
            om.counter("istio_requests_total", labels, _counts(lat))
            om.histogram("istio_request_duration_milliseconds", labels, ISTIO_LE, lat)
    n = (T1 - T0) // SCRAPE
    for v, (opened, failed, sent, received) in L4.items():
        for reporter in ("destination", "source"):  # the source's report is not ztunnel's: not read
            edge = {
                "reporter": reporter, "source_workload": "reviews-v2", "destination_workload": f"ratings-{v}",
                "destination_service_name": "ratings", "destination_version": v,
                "connection_security_policy": "mutual_tls",
            }  # fmt: skip
            inc = np.array([0.0] + [1.0] * n)
            om.counter("istio_tcp_connections_opened_total", edge, opened * inc)
            om.counter(
                "istio_tcp_connections_closed_total", {**edge, "response_flags": "-"}, (opened - failed) * inc
            )
            om.counter("istio_tcp_connections_closed_total", {**edge, "response_flags": "UF"}, failed * inc)
            om.counter("istio_tcp_sent_bytes_total", edge, sent * inc)
            om.counter("istio_tcp_received_bytes_total", edge, received * inc)


def _dataset() -> str:
    om = OpenMetrics()
    _istio(om)
    _ambient(om)
    _linkerd(om)
    _envoy(om, "envoy", {s.version: _local_envoy_labels(s.version) for s in STREAMS["envoy"]})
    _envoy(om, "consul", {s.version: _consul_labels(s.version) for s in STREAMS["consul"]})
    times = list(range(LONG0, LONG1 + 1, 60))
    om.add("workbench_test_up", {"job": "long"}, times, np.ones(len(times)))
    return om.text()


# ------------------------------------------------------------------------------------------------
# A real Prometheus


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def prom_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus serving the generated blocks; stopped (and reaped) afterwards."""
    root = tmp_path_factory.mktemp("prom")
    data = root / "data"
    data.mkdir()
    (root / "series.om").write_text(_dataset())
    made = subprocess.run(
        ["promtool", "tsdb", "create-blocks-from", "openmetrics", str(root / "series.om"), str(data)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    (root / "prometheus.yml").write_text("global:\n  scrape_interval: 1m\n")
    port = _free_port()
    log = (root / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={data}",
         "--storage.tsdb.retention.time=30d", f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (root / "prometheus.log").read_text()
            try:
                if requests.get(f"{url}/-/ready", timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "prometheus did not become ready"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


class CountingPrometheus(Prometheus):
    """A Prometheus that records every range query it sends (start, end, step)."""

    def __init__(self, url: str, **kwargs: object) -> None:
        super().__init__(url, **kwargs)  # type: ignore[arg-type]
        self.calls: list[tuple[str, float, float, float]] = []

    def query_range(self, promql, start, end, step_s):  # type: ignore[no-untyped-def]
        self.calls.append((promql, float(start), float(end), float(step_s)))
        return super().query_range(promql, start, end, step_s)


# ------------------------------------------------------------------------------------------------
# Helpers for the assertions


def _bucket_index(value: float, les: list[float]) -> int:
    """Index of the Prometheus bucket (le[i-1], le[i]] holding ``value``."""
    return int(np.searchsorted(np.array([*les, math.inf]), value, side="left"))


def _check(frame: pd.DataFrame, dialect: str, les: list[float], destination: str = "reviews") -> None:
    """Every window's rps, error share and p50/p99 match the generated traffic of each version."""
    assert set(frame["destination"]) == {destination}
    window_starts = list(range(T0, T1, WINDOW))
    for t in TRAFFIC[dialect]:
        s = t.stream
        rows = frame[frame["version"] == s.version].set_index("time")
        assert list(rows.index) == [pd.Timestamp(w, unit="s", tz="UTC") for w in window_starts]
        np.testing.assert_allclose(rows["rps"], s.rps, rtol=0.01)
        np.testing.assert_allclose(rows["error_rate"], s.error_share, atol=1e-9)
        for w in window_starts:
            lat, errors = t.window(w)
            row = rows.loc[pd.Timestamp(w, unit="s", tz="UTC")]
            assert row["requests"] == pytest.approx(len(lat), rel=1e-9)
            assert row["errors"] == pytest.approx(errors, rel=1e-9, abs=1e-9)
            h = row["histogram"]
            assert isinstance(h, Histogram) and h.count == pytest.approx(len(lat))
            for q in (0.5, 0.99):
                est, true = h.quantile(q), float(np.quantile(lat, q))
                assert abs(_bucket_index(est, les) - _bucket_index(true, les)) <= 1, (
                    dialect,
                    s,
                    w,
                    q,
                    est,
                    true,
                )


# ------------------------------------------------------------------------------------------------
# Tests


def test_istio_inbound_windows(prom_url: str) -> None:
    frame = windows(prom_url, "istio", T0, T1, WINDOW)
    assert set(frame["source"]) == {"productpage-v1"}
    assert set(frame["view"]) == {"inbound"} and set(frame["dialect"]) == {"istio"}
    assert len(frame) == 2 * (T1 - T0) // WINDOW  # reporter=source rows are not counted twice
    _check(frame, "istio", ISTIO_LE)


def test_istio_ambient_reads_the_waypoints_reports_only(prom_url: str) -> None:
    frame = windows(prom_url, "istio-ambient", T0, T1, WINDOW)
    assert set(frame["source"]) == {"reviews-v2"} and set(frame["dialect"]) == {"istio-ambient"}
    _check(frame, "istio-ambient", ISTIO_LE, destination="ratings")
    sidecars = windows(prom_url, "istio", T0, T1, WINDOW)  # and the sidecars' dialect does not see them
    assert "ratings" not in set(sidecars["destination"])


def test_ztunnel_l4_windows_count_connections_failures_and_bytes(prom_url: str) -> None:
    frame = l4_windows(prom_url, T0, T1, WINDOW, matchers='destination_service_name="ratings"')
    assert list(frame.columns) == L4_COLUMNS
    per_window = WINDOW // SCRAPE
    for v, (opened, failed, sent, received) in L4.items():
        rows = frame[frame["version"] == v]
        assert len(rows) == (T1 - T0) // WINDOW and set(rows["source"]) == {"reviews-v2"}
        assert set(rows["destination"]) == {"ratings"}
        np.testing.assert_allclose(rows["opened"], opened * per_window, rtol=1e-6)
        np.testing.assert_allclose(rows["closed"], opened * per_window, rtol=1e-6)
        np.testing.assert_allclose(rows["failed"], failed * per_window, atol=1e-6)
        np.testing.assert_allclose(rows["sent_bytes"], sent * per_window, rtol=1e-6)
        np.testing.assert_allclose(rows["received_bytes"], received * per_window, rtol=1e-6)
    assert l4_windows(prom_url, T0, T1, WINDOW, matchers='destination_service_name="nothing"').empty


def test_istio_outbound_view_and_matchers(prom_url: str) -> None:
    frame = windows(prom_url, "istio", T0, T1, WINDOW, view="outbound", matchers='destination_version="v2"')
    assert set(frame["version"]) == {"v2"}
    np.testing.assert_allclose(frame["rps"], 6.0, rtol=0.01)


def test_linkerd_inbound_and_outbound(prom_url: str) -> None:
    inbound = windows(prom_url, "linkerd", T0, T1, WINDOW)
    assert set(inbound["source"]) == {"productpage"}  # the client's service account
    _check(inbound, "linkerd", LINKERD_LE)
    outbound = windows(prom_url, "linkerd", T0, T1, WINDOW, view="outbound")
    assert set(outbound["source"]) == {"productpage-v1"}
    assert set(outbound["version"]) == {"v1", "v2"}  # from dst_deployment reviews-v1 / reviews-v2
    _check(outbound, "linkerd", LINKERD_LE)


def test_envoy_local_mesh_names(prom_url: str) -> None:
    frame = windows(prom_url, "envoy", T0, T1, WINDOW)
    assert set(frame["source"]) == {"productpage"}
    _check(frame, "envoy", ISTIO_LE)


def test_consul_envoy_metrics(prom_url: str) -> None:
    frame = windows(prom_url, "consul", T0, T1, WINDOW)
    assert set(frame["source"]) == {"frontend"}
    _check(frame, "consul", ISTIO_LE)


def test_arm_feeds_stats_compare(prom_url: str) -> None:
    frame = windows(prom_url, "istio", T0, T1, WINDOW)
    v1, v2 = arm(frame, version="v1"), arm(frame, version="v2")
    assert len(v1) == len(v2) == (T1 - T0) // WINDOW
    counts = arm_counts(frame, version="v2")
    assert counts["errors"].sum() == pytest.approx(sum(t.window(w)[1] for w in range(T0, T1, WINDOW)
                                                       for t in TRAFFIC["istio"][1:]))  # fmt: skip
    result = compare(v1, v2, metrics=("p50", "p99"), window=f"{WINDOW}s")
    assert result.paired
    assert result["p50"].verdict == "worse"  # v2's median is twice v1's
    # arm() merges edges by adding counts: both versions together hold all requests of a window.
    both = arm(frame)
    assert both.iloc[0].count == pytest.approx(v1.iloc[0].count + v2.iloc[0].count)


def test_windows_align_to_whole_windows(prom_url: str) -> None:
    frame = windows(prom_url, "istio", T0 + 7, T0 + 5 * WINDOW + 30, WINDOW)
    starts = sorted(set(frame["time"]))
    assert starts == [pd.Timestamp(T0 + k * WINDOW, unit="s", tz="UTC") for k in range(1, 5)]
    assert windows(prom_url, "istio", T0 + 7, T0 + 50, WINDOW).empty


def test_range_beyond_11000_points_is_chunked(prom_url: str) -> None:
    prom = CountingPrometheus(prom_url)
    start, end = LONG0 + 600, LONG1  # step 1 s: > 11,000 points
    n_points = end - start + 1
    assert n_points > MAX_POINTS
    with pytest.raises(PrometheusError, match="11,000 points"):
        prom.query_range("sum(workbench_test_up)", start, end, 1)  # Prometheus' own limit, unchunked
    prom.calls.clear()
    frame = query_range_chunked(prom, "sum(workbench_test_up)", start, end, 1)
    assert len(prom.calls) == math.ceil(n_points / MAX_POINTS) == 2
    assert all((e - s) / step + 1 <= MAX_POINTS for _, s, e, step in prom.calls)
    stamps = (frame["timestamp"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    assert list(stamps) == list(range(start, end + 1))  # complete: no gap, no duplicate
    assert (frame["value"] == 1.0).all()


def test_windows_chunked_equals_unchunked(prom_url: str) -> None:
    prom = CountingPrometheus(prom_url)
    whole = windows(prom, "linkerd", T0, T1, WINDOW)
    assert len(prom.calls) == 3  # requests, errors, buckets
    prom.calls.clear()
    chunked = windows(prom, "linkerd", T0, T1, WINDOW, max_points=7)
    assert len(prom.calls) == 3 * math.ceil((T1 - T0) / WINDOW / 7)
    pd.testing.assert_frame_equal(whole.drop(columns="histogram"), chunked.drop(columns="histogram"))
    assert all(a == b for a, b in zip(whole["histogram"], chunked["histogram"], strict=True))


def test_refused_connection_is_retried_then_named() -> None:
    port = _free_port()  # nothing listens there
    prom = Prometheus(f"http://admin:s3cret@127.0.0.1:{port}", timeout_s=2, retries=2, backoff_s=0.05)
    began = time.monotonic()
    with pytest.raises(PrometheusError) as info:
        windows(prom, "istio", T0, T0 + 5 * WINDOW, WINDOW)
    message = str(info.value)
    assert f"http://***@127.0.0.1:{port}" in message and "s3cret" not in message
    assert "istio_requests_total" in message and "after 2 retries" in message
    assert time.monotonic() - began < 5


def test_retries_are_bounded(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/api/v1/query_range").respond_with_data("overloaded", status=503)
    prom = Prometheus(httpserver.url_for("/"), timeout_s=2, retries=3, backoff_s=0.01)
    with pytest.raises(PrometheusError, match="after 3 retries"):
        windows(prom, "linkerd", T0, T0 + 5 * WINDOW, WINDOW)
    assert len(httpserver.log) == 1 + 3  # the first attempt and three retries, then give up


def test_rejected_query_is_not_retried(httpserver: HTTPServer) -> None:
    body = '{"status":"error","errorType":"bad_data","error":"parse error"}'
    httpserver.expect_request("/api/v1/query_range").respond_with_data(body, status=400)
    prom = Prometheus(httpserver.url_for("/").rstrip("/"), timeout_s=2, retries=3, backoff_s=0.01)
    with pytest.raises(PrometheusError, match="parse error"):
        windows(prom, "istio", T0, T0 + 5 * WINDOW, WINDOW)
    assert len(httpserver.log) == 1


def test_bad_arguments() -> None:
    prom = Prometheus("http://127.0.0.1:9")
    with pytest.raises(ValueError, match="whole number of seconds"):
        windows(prom, "istio", T0, T1, 2.5)
    with pytest.raises(ValueError, match="no view"):
        windows(prom, "istio", T0, T1, WINDOW, view="sideways")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"unknown dialect 'kuma'.*istio, linkerd, envoy, consul"):
        windows(prom, "kuma", T0, T1, WINDOW)
