"""The local mesh with real processes: splits, routes, faults, RBAC, mTLS, telemetry, lifecycle."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
import requests
from statsmodels.stats.proportion import proportion_confint

from workbench.backends.base import BackendError
from workbench.backends.local import LocalMesh
from workbench.config import CircuitBreaker, Fault, Policy, PolicyRule, Retries, Route
from workbench.load.results import LoadProfile

pytestmark = pytest.mark.slow


def _inside(count: int, n: int, p: float, alpha: float = 0.001) -> bool:
    """Is p inside the (1 - alpha) Wilson interval of count/n?"""
    lo, hi = proportion_confint(count, n, alpha=alpha, method="wilson")
    return lo <= p <= hi


@pytest.fixture(scope="module")
def mesh() -> LocalMesh:
    with LocalMesh(mode="both") as m:
        yield m


@pytest.fixture(scope="module")
def mtls_mesh() -> LocalMesh:
    with LocalMesh(mode="both-mtls", wait_for_metrics=False) as m:
        yield m


def test_every_version_answers_through_the_sidecars(mesh: LocalMesh) -> None:
    resp = mesh.request_as("loadgen", "frontend")
    assert resp.status_code == 200 and resp.headers["x-version"] == "v1"
    # apps, Envoys, and Prometheus + procstats + the audit exporter
    assert len(mesh.status()) == 8 + 17 + 3 and all(row["alive"] for row in mesh.status())


def test_split_90_10_within_binomial_interval(mesh: LocalMesh) -> None:
    mesh.set_split("catalog", {"v1": 90, "v2": 10})
    # 200 rps is well below the catalog's capacity on 2 cores (~400): the split, not queueing, is tested
    res = mesh.run_load("catalog", LoadProfile(rps=200, connections=8, duration_s=8, warmup_s=1))
    counts = Counter(res.samples["variant"])
    n = counts["v1"] + counts["v2"]
    assert n >= 1400 and set(counts) == {"v1", "v2"}
    assert _inside(counts["v2"], n, 0.10), counts
    assert (res.samples["status"] == 200).all()


def test_live_split_changes_under_load_fail_nothing_and_keep_connections(mesh: LocalMesh) -> None:
    mesh.set_split("catalog", {"v1": 90, "v2": 10})
    lg = mesh.admin_url("loadgen-outbound")
    result: dict = {}
    # No warm-up phase: k6 cancels requests in flight when a warm-up ends, closing connections.
    # Far below capacity: a saturated k6 opens and drops connections of its own accord.
    profile = LoadProfile(rps=120, connections=8, duration_s=16, warmup_s=0)
    loader = threading.Thread(target=lambda: result.setdefault("r", mesh.run_load("catalog", profile)))
    loader.start()
    time.sleep(2.5)  # k6 has started; its connections are established
    before = _stats(lg)
    switched = []
    for split in ({"v1": 50, "v2": 50}, {"v1": 0, "v2": 100}):
        time.sleep(2.0)
        mesh.set_split("catalog", split)
        switched.append(time.time())
    time.sleep(1.0)
    during = _stats(lg)
    loader.join(timeout=60)
    samples = result["r"].samples
    assert len(samples) > 1600 and (samples["status"] == 200).all(), samples["status"].value_counts()
    # Connections from k6 to the sidecar and from the sidecar to the versions were never closed.
    assert during["http.outbound.downstream_cx_destroy"] == before["http.outbound.downstream_cx_destroy"]
    destroyed = sum(v - before.get(k, 0) for k, v in during.items() if k.endswith("upstream_cx_destroy"))
    assert destroyed == 0
    assert during["http.outbound.downstream_cx_total"] - before["http.outbound.downstream_cx_total"] <= 8
    ts = samples["timestamp"].astype("int64") / 1e9
    last = samples[ts > switched[1] + 0.3]
    assert len(last) > 150 and set(last["variant"]) == {"v2"}
    middle = samples[(ts > switched[0] + 0.3) & (ts < switched[1] - 0.3)]
    assert _inside(int((middle["variant"] == "v2").sum()), len(middle), 0.5)


def test_header_and_cookie_routes_send_everything_to_the_named_version(mesh: LocalMesh) -> None:
    mesh.set_route("reviews", Route(header="x-variant", value="b"), "v3")
    mesh.set_route("ratings", None)
    target = mesh.load_target("reviews")
    with_header = Counter(
        requests.get(target.urls[0] + "/", headers={**target.headers, "x-variant": "b"}, timeout=5).headers[
            "x-version"
        ]
        for _ in range(100)
    )
    without = Counter(mesh.request_as("loadgen", "reviews").headers["x-version"] for _ in range(50))
    assert with_header == {"v3": 100} and without == {"v1": 50}
    mesh.set_route("reviews", Route(cookie="beta", value="yes"), "v2")
    cookie = Counter(
        requests.get(
            target.urls[0] + "/", headers={**target.headers, "cookie": "a=1; beta=yes; c=2"}, timeout=5
        ).headers["x-version"]
        for _ in range(50)
    )
    assert cookie == {"v2": 50}
    mesh.set_route("reviews", None)
    assert mesh.request_as("loadgen", "reviews").headers["x-version"] == "v1"


def test_fault_abort_percentage_within_binomial_interval(mesh: LocalMesh) -> None:
    mesh.set_fault("pricing", Fault(abort=503, percent=25))
    try:
        res = mesh.run_load("pricing", LoadProfile(rps=500, connections=8, duration_s=4, warmup_s=1))
    finally:
        mesh.set_fault("pricing", None)
    n = len(res.samples)
    aborted = int((res.samples["status"] == 503).sum())
    assert n >= 1500 and _inside(aborted, n, 0.25), (aborted, n)
    assert set(res.samples["status"]) == {200, 503}


POLICY = Policy(
    service="ratings",
    action="allow",
    rules=[
        PolicyRule(sources=["reviews"], paths=["/ratings/*"], methods=["GET"]),
        PolicyRule(sources=["frontend"], paths=["/health"]),
    ],
)
MATRIX = [
    ("reviews", "/ratings/1", "GET", 200),
    ("reviews", "/ratings/1", "POST", 403),
    ("reviews", "/admin", "GET", 403),
    ("frontend", "/ratings/1", "GET", 403),
    ("frontend", "/health", "GET", 200),
    ("frontend", "/health", "DELETE", 200),
    ("catalog", "/ratings/1", "GET", 403),
    ("loadgen", "/health", "GET", 403),
]


@pytest.mark.parametrize("which", ["mesh", "mtls_mesh"])
def test_rbac_matrix_gives_exactly_the_expected_statuses(which: str, request: pytest.FixtureRequest) -> None:
    m: LocalMesh = request.getfixturevalue(which)
    m.set_policy(POLICY)
    try:
        observed = [(c, p, meth, m.request_as(c, "ratings", p, meth).status_code) for c, p, meth, _ in MATRIX]
    finally:
        m.set_policy(None, service="ratings")
    assert observed == MATRIX
    assert m.request_as("catalog", "ratings", "/ratings/1").status_code == 200  # policy removed


def test_deny_policy(mesh: LocalMesh) -> None:
    mesh.set_policy(Policy(service="pricing", action="deny", rules=[PolicyRule(methods=["DELETE"])]))
    try:
        assert mesh.request_as("catalog", "pricing", "/x", "DELETE").status_code == 403
        assert mesh.request_as("catalog", "pricing", "/x", "GET").status_code == 200
    finally:
        mesh.set_policy(None, service="pricing")


def test_mtls_refuses_plaintext_and_uses_spiffe_identities(mtls_mesh: LocalMesh) -> None:
    inbound = mtls_mesh.layout.inbound["ratings"]["v1"]
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{inbound.listen_port}/", timeout=3)
    assert mtls_mesh.request_as("reviews", "ratings").status_code == 200
    certs = requests.get(mtls_mesh.admin_url("ratings-v1-inbound") + "/certs", timeout=3).json()
    sans = [
        s["uri"]
        for c in certs["certificates"]
        for cc in c["cert_chain"]
        for s in cc.get("subject_alt_names", [])
        if "uri" in s
    ]
    assert "spiffe://local/ns/default/sa/ratings" in sans


def test_per_version_rps_from_prometheus_matches_k6(mesh: LocalMesh) -> None:
    mesh.set_split("catalog", {"v1": 70, "v2": 30})
    time.sleep(2.0)  # let a scrape see the counters at rest
    t0 = time.time()
    res = mesh.run_load("catalog", LoadProfile(rps=400, connections=8, duration_s=6, warmup_s=0))
    time.sleep(2.5)  # two more scrapes after the last request
    t1 = time.time()
    k6_counts = Counter(res.samples["variant"])
    selector = (
        'envoy_cluster_upstream_rq_total{sidecar="loadgen-outbound",'
        'envoy_cluster_name=~"outbound\\\\|catalog\\\\|.*"}'
    )
    query = f"sum by (envoy_cluster_name) ({selector} - {selector} offset {int((t1 - t0) * 1000)}ms)"
    resp = requests.get(
        mesh.prometheus_url() + "/api/v1/query", params={"query": query, "time": t1}, timeout=5
    )
    prom = {
        r["metric"]["envoy_cluster_name"].split("|")[2]: float(r["value"][1])
        for r in resp.json()["data"]["result"]
    }
    for version in ("v1", "v2"):
        rps_prom, rps_k6 = prom[version] / 6, k6_counts[version] / 6
        assert rps_prom == pytest.approx(rps_k6, rel=0.05), (query, prom, k6_counts)


def test_invalid_route_file_is_rejected_and_last_good_config_kept(mesh: LocalMesh) -> None:
    mesh.set_split("pricing", {"v1": 100})
    sc = mesh.layout.outbound["loadgen"]
    rejected_before = _rejected(_stats(mesh.admin_url(sc.name)))
    tmp = sc.path("rds").with_suffix(".tmp")
    tmp.write_text(
        "resources: [{'@type': type.googleapis.com/envoy.config.route.v3.RouteConfiguration, "
        "name: outbound, virtual_hosts: [{name: x, domains: ['*'], routes: [{match: {prefix: '/'}, "
        "route: {cluster: does-not-exist, weighted_clusters: {}}}]}]}]\n"
    )
    tmp.replace(sc.path("rds"))
    deadline = time.time() + 5
    while time.time() < deadline:
        stats = _stats(mesh.admin_url(sc.name))
        if _rejected(stats) > rejected_before:
            break
        time.sleep(0.05)
    assert _rejected(stats) > rejected_before
    assert mesh.request_as("loadgen", "pricing").status_code == 200  # still routed by the old config
    mesh.set_split("pricing", {"v1": 100})  # and the workbench's next valid write wins
    assert mesh.request_as("loadgen", "catalog").status_code == 200


def test_known_effect_by_changing_a_versions_service_time(mesh: LocalMesh) -> None:
    mesh.set_split("catalog", {"v1": 50, "v2": 50})
    mesh.set_behaviour("catalog", "v2", service_time_ms=12.0, sigma=0.0)
    try:
        res = mesh.run_load("catalog", LoadProfile(rps=200, connections=8, duration_s=3, warmup_s=1))
    finally:
        mesh.set_behaviour("catalog", "v2", service_time_ms=2.0, sigma=0.4)
    p50 = res.samples.groupby("variant")["latency_ms"].median()
    assert 8.0 < p50["v2"] - p50["v1"] < 16.0, p50
    with pytest.raises(BackendError, match="rejected behaviour"):
        mesh.set_behaviour("catalog", "v1", error_rate=2)


def test_bad_requests_to_the_backend_are_clear_errors(mesh: LocalMesh) -> None:
    with pytest.raises(BackendError, match="catalog has no version v9"):
        mesh.set_split("catalog", {"v1": 50, "v9": 50})
    with pytest.raises(BackendError, match="summing to 100"):
        mesh.set_split("catalog", {"v1": 50, "v2": 60})
    with pytest.raises(BackendError, match="no service 'nope'"):
        mesh.get_split("nope")


def test_sidecars_write_json_access_logs_with_microseconds(mesh: LocalMesh) -> None:
    import json

    resp = mesh.request_as("loadgen", "pricing", "/price/7")
    request_id = resp.request.headers.get("x-request-id")
    sc = mesh.layout.inbound["pricing"]["v1"]
    deadline = time.time() + 5
    entries: list[dict] = []
    while time.time() < deadline and not entries:
        time.sleep(0.2)  # sidecars flush their logs every second
        lines = (sc.directory / "access.log").read_text().splitlines()
        entries = [json.loads(x) for x in lines if "/price/7" in x]
    assert entries, "no access log entry for the request"
    e = entries[-1]
    assert e["status"] == 200 and e["caller"] == "loadgen" and e["upstream_cluster"] == "local_app"
    assert isinstance(e["duration_us"], int) and e["duration_us"] > 0 and e["version"] == "v1"
    assert request_id is None or e["request_id"] == request_id


def test_retries_recover_app_errors(mesh: LocalMesh) -> None:
    mesh.set_behaviour("pricing", "v1", error_rate=0.3)
    profile = LoadProfile(rps=300, connections=8, duration_s=4, warmup_s=1)
    try:
        plain = mesh.run_load("pricing", profile)
        mesh.set_resilience("pricing", retries=Retries(attempts=3, retry_on=["5xx"]))
        retried = mesh.run_load("pricing", profile)
    finally:
        mesh.set_resilience("pricing")
        mesh.set_behaviour("pricing", "v1", error_rate=0.0)
    n1, e1 = len(plain.samples), int((plain.samples["status"] == 503).sum())
    n2, e2 = len(retried.samples), int((retried.samples["status"] == 503).sum())
    assert _inside(e1, n1, 0.3)
    assert _inside(e2, n2, 0.3**4)  # fails only when all four attempts fail


def test_timeout_cuts_slow_calls(mesh: LocalMesh) -> None:
    mesh.set_behaviour("pricing", "v1", service_time_ms=60.0, sigma=0.0)
    try:
        mesh.set_resilience("pricing", timeout_s=0.02)
        res = mesh.run_load("pricing", LoadProfile(rps=50, connections=8, duration_s=2, warmup_s=1))
    finally:
        mesh.set_resilience("pricing")
        mesh.set_behaviour("pricing", "v1", service_time_ms=1.0, sigma=0.4)
    assert set(res.samples["status"]) == {504}
    assert res.samples["latency_ms"].median() == pytest.approx(20.0, abs=8.0)


def test_circuit_breaker_sheds_load_beyond_its_limits(mesh: LocalMesh) -> None:
    mesh.set_behaviour("pricing", "v1", service_time_ms=20.0, sigma=0.0)
    profile = LoadProfile(rps=300, connections=16, duration_s=3, warmup_s=1)
    try:
        open_ = mesh.run_load("pricing", profile)
        breaker = CircuitBreaker(
            max_connections=1, max_pending_requests=1, max_requests=2, consecutive_5xx=None
        )
        mesh.set_resilience("pricing", breaker=breaker)
        tripped = mesh.run_load("pricing", profile)
    finally:
        mesh.set_resilience("pricing")
        mesh.set_behaviour("pricing", "v1", service_time_ms=1.0, sigma=0.4)
    assert (open_.samples["status"] == 200).all()
    shed = (tripped.samples["status"] == 503).mean()
    assert shed > 0.3, shed  # 300 rps x 20 ms needs ~6 concurrent requests; the breaker allows ~2-3
    overflow = _stats(mesh.admin_url("loadgen-outbound"))[
        "cluster.outbound|pricing|v1.upstream_rq_pending_overflow"
    ]
    assert overflow > 0


def _rejected(stats: dict[str, int]) -> int:
    prefix = "http.outbound.rds.outbound."
    return stats.get(prefix + "update_rejected", 0) + stats.get(prefix + "update_failure", 0)


def _stats(admin: str) -> dict[str, int]:
    text = requests.get(admin + "/stats", timeout=3).text
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if value.isdigit():
            out[name] = int(value)
    return out


def test_cookie_route_regex_matches_the_value_literally() -> None:
    """The local sidecars and the cluster adapters match a cookie route with the same regex."""
    import re

    from workbench.backends.local.envoy import _header_match

    for value in ("a.b", "a\\b", "x+y"):
        match = _header_match(Route(cookie="canary", value=value, percent=50))
        regex = match["string_match"]["safe_regex"]["regex"]
        assert re.fullmatch(regex, f"x=1; canary={value}; y=2"), (value, regex)
        assert re.fullmatch(regex, f"canary={value}"), (value, regex)
        assert not re.fullmatch(regex, f"canary={value}z") and not re.fullmatch(regex, "canary=" + value * 2)
        assert not re.fullmatch(regex, f"xcanary={value}")
