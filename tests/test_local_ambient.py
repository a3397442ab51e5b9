"""The ambient modes with real processes: traffic through node proxies (mTLS HTTP/2 CONNECT tunnels)
and waypoints; L4 authorization at the node proxy; splits, routes, faults, retries and an
authorization matrix at the waypoint behaving as in the sidecar modes; telemetry roles."""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections import Counter

import pytest
import requests
from test_local_mesh import MATRIX, POLICY, _inside, _stats

from workbench.analysis.localize import AccessLogTail
from workbench.backends.base import Probe
from workbench.backends.capabilities import Unavailable
from workbench.backends.local import LocalMesh
from workbench.backends.local.certs import spiffe_id
from workbench.config import Fault, Policy, PolicyRule, Retries, Route
from workbench.load.results import LoadProfile

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ambient() -> LocalMesh:
    with LocalMesh(mode="ambient", wait_for_metrics=False) as m:
        yield m


@pytest.fixture(scope="module")
def waypoint() -> LocalMesh:
    with LocalMesh(mode="ambient-waypoint") as m:
        yield m


def _records(raw: dict[str, list[str]], proxy: str) -> list[dict]:
    return [json.loads(line) for line in raw.get(proxy, [])]


def test_ambient_calls_cross_both_node_proxies_in_mutual_tls_connect_tunnels(ambient: LocalMesh) -> None:
    assert len(ambient.status()) == 8 + 2 + 3  # apps, two node proxies, the workbench's observers
    tail = AccessLogTail(ambient.run_dir / "envoy").skip()
    node2 = ambient.admin_url("node-2-node-proxy")
    before = _stats(node2)
    assert ambient.request_as("loadgen", "frontend").status_code == 200  # the whole demo chain
    versions = Counter(ambient.request_as("frontend", "catalog").headers["x-version"] for _ in range(60))
    assert set(versions) == {"v1", "v2"}  # no waypoint: any pod of the service, as kube-proxy
    time.sleep(0.6)  # the access logs' flush
    raw = tail.read_raw()
    # frontend runs on node-1, catalog on node-2: the caller's node proxy wraps the call ...
    out = [r for r in _records(raw, "node-1-node-proxy") if r["upstream_cluster"] == "hbone|frontend|catalog"]
    hbone2 = ambient.layout.node_proxies["node-2"].listen_port
    assert out and {r["upstream_host"] for r in out} == {f"127.0.0.1:{hbone2}"}
    # ... and the callee's node proxy terminates CONNECT from frontend's verified identity
    into = [r for r in _records(raw, "node-2-node-proxy") if r["method"] == "CONNECT"]
    pods = {f"127.0.0.1:{a.port}": f"pod|catalog|{v}" for v, a in ambient.layout.apps["catalog"].items()}
    to_catalog = [r for r in into if r["peer"] == spiffe_id("frontend") and r["authority"] in pods]
    assert {r["authority"] for r in to_catalog} == set(pods)  # both pods, each named by its address
    assert all(r["upstream_cluster"] == pods[r["authority"]] and r["status"] == 200 for r in to_catalog)
    after = _stats(node2)
    handshakes = sum(v - before.get(k, 0) for k, v in after.items() if k.endswith(".ssl.handshake"))
    assert handshakes >= 1  # mutual TLS on the HBONE port
    assert after["http.hbone.downstream_cx_http2_total"] > before.get(
        "http.hbone.downstream_cx_http2_total", 0
    )
    assert after["http.hbone.downstream_rq_total"] - before.get("http.hbone.downstream_rq_total", 0) >= 1


def test_the_tunnel_port_refuses_plaintext_and_clients_without_a_certificate(ambient: LocalMesh) -> None:
    port = ambient.layout.node_proxies["node-2"].listen_port
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/", headers={"Host": "catalog"}, timeout=3)
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=3) as raw,
        pytest.raises((ssl.SSLError, ConnectionError)),
        context.wrap_socket(raw, server_hostname="catalog") as tls,
    ):
        tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        if not tls.recv(1024):  # TLS 1.3: the missing certificate is refused after the handshake
            raise ConnectionError("closed")


def test_ambient_authorizes_by_caller_identity_and_refuses_l7_naming_the_waypoint(ambient: LocalMesh) -> None:
    ambient.set_policy(Policy(service="ratings", rules=[PolicyRule(sources=["reviews"])]))
    try:
        answers = ambient.requests_as("ratings", [Probe("reviews"), Probe("frontend"), Probe("loadgen")])
    finally:
        ambient.set_policy(None, service="ratings")
    allowed, *denied = answers
    assert [a.status for a in allowed] == [200, 200, 200] and not any(a.denied for a in allowed)
    assert all(a.denied and a.status == 0 for probe in denied for a in probe), denied
    ambient.set_policy(Policy(service="pricing", action="deny", rules=[PolicyRule(sources=["catalog"])]))
    try:
        deny = ambient.requests_as("pricing", [Probe("catalog"), Probe("frontend")], attempts=2)
    finally:
        ambient.set_policy(None, service="pricing")
    assert all(a.denied for a in deny[0]) and [a.status for a in deny[1]] == [200, 200]
    assert ambient.request_as("frontend", "ratings").status_code == 200  # removed
    for refused in (
        lambda: ambient.set_split("catalog", {"v1": 90, "v2": 10}),
        lambda: ambient.set_route("reviews", Route(header="x", value="y"), "v2"),
        lambda: ambient.set_fault("pricing", Fault(abort=503, percent=10), at="server"),
        lambda: ambient.set_resilience("pricing", retries=Retries(attempts=2, retry_on=["5xx"])),
        lambda: ambient.set_policy(
            Policy(service="ratings", rules=[PolicyRule(sources=["reviews"], paths=["/x"])])
        ),
    ):
        with pytest.raises(Unavailable, match=r"mode 'ambient' has none.*use mode ambient-waypoint"):
            refused()


def test_waypoint_path_is_node_proxy_waypoint_node_proxy_app(waypoint: LocalMesh) -> None:
    tail = AccessLogTail(waypoint.run_dir / "envoy").skip()
    assert waypoint.request_as("loadgen", "catalog").status_code == 200
    time.sleep(0.6)
    raw = tail.read_raw()
    wp = waypoint.layout.waypoint_for("catalog")
    entering = _records(raw, "node-1-node-proxy")
    assert any(r["upstream_cluster"] == "hbone|loadgen|catalog-waypoint"
               and r["upstream_host"] == f"127.0.0.1:{wp.listen_port}" for r in entering)  # fmt: skip
    (l7,) = [r for r in _records(raw, "catalog-waypoint")]
    assert l7["peer"] == spiffe_id("loadgen") and l7["upstream_cluster"].startswith("outbound|catalog|")
    assert l7["duration_us"] > l7["upstream_us"] > 0
    into = [r for r in _records(raw, "node-2-node-proxy") if r["method"] == "CONNECT"]
    assert any(r["peer"] == spiffe_id("catalog-waypoint") for r in into)


def test_waypoint_split_90_10_within_binomial_interval(waypoint: LocalMesh) -> None:
    waypoint.set_split("catalog", {"v1": 90, "v2": 10})
    try:
        # the chain has 8 Envoy traversals here (2 waypoints, 4 node proxy passes): 200 rps is unsaturated
        res = waypoint.run_load("catalog", LoadProfile(rps=200, connections=8, duration_s=6, warmup_s=1))
    finally:
        waypoint.set_split("catalog", {"v1": 100})
    counts = Counter(res.samples["variant"])
    n = counts["v1"] + counts["v2"]
    assert n >= 1100 and set(counts) == {"v1", "v2"}
    assert _inside(counts["v2"], n, 0.10), counts
    assert (res.samples["status"] == 200).all()
    assert (
        res.meta["node_proxy_traversals_per_request"] == 4
    )  # loadgen->catalog->pricing, 2 node proxies each
    cost = res.meta["proxy_cost"]
    assert cost["cpu_cores_waypoint"] > 0 and cost["cpu_cores_node"] > 0


def test_waypoint_header_and_cookie_routes(waypoint: LocalMesh) -> None:
    waypoint.set_route("reviews", Route(header="x-variant", value="b"), "v3")
    target = waypoint.load_target("reviews")
    try:
        with_header = Counter(
            requests.get(
                target.urls[0] + "/", headers={**target.headers, "x-variant": "b"}, timeout=5
            ).headers["x-version"]
            for _ in range(60)
        )
        without = Counter(waypoint.request_as("loadgen", "reviews").headers["x-version"] for _ in range(30))
        waypoint.set_route("reviews", Route(cookie="beta", value="yes"), "v2")
        cookie = Counter(
            requests.get(
                target.urls[0] + "/", headers={**target.headers, "cookie": "a=1; beta=yes"}, timeout=5
            ).headers["x-version"]
            for _ in range(30)
        )
    finally:
        waypoint.set_route("reviews", None)
    assert with_header == {"v3": 60} and without == {"v1": 30} and cookie == {"v2": 30}


def test_waypoint_fault_abort_percentage_within_binomial_interval(waypoint: LocalMesh) -> None:
    waypoint.set_fault("pricing", Fault(abort=503, percent=25))
    try:
        res = waypoint.run_load("pricing", LoadProfile(rps=300, connections=8, duration_s=5, warmup_s=1))
    finally:
        waypoint.set_fault("pricing", None)
    n, aborted = len(res.samples), int((res.samples["status"] == 503).sum())
    assert n >= 1400 and _inside(aborted, n, 0.25), (aborted, n)
    assert set(res.samples["status"]) == {200, 503}


def test_waypoint_rbac_matrix_gives_exactly_the_sidecar_statuses(waypoint: LocalMesh) -> None:
    waypoint.set_policy(POLICY)
    try:
        observed = [(c, p, m, waypoint.request_as(c, "ratings", p, m).status_code) for c, p, m, _ in MATRIX]
    finally:
        waypoint.set_policy(None, service="ratings")
    assert observed == MATRIX
    assert waypoint.request_as("catalog", "ratings", "/ratings/1").status_code == 200


def test_waypoint_retries_act_on_a_server_side_fault(waypoint: LocalMesh) -> None:
    profile = LoadProfile(rps=300, connections=8, duration_s=3, warmup_s=1)
    waypoint.set_fault("pricing", Fault(abort=503, percent=30), at="server")
    try:
        plain = waypoint.run_load("pricing", profile)
        waypoint.set_resilience("pricing", retries=Retries(attempts=3, retry_on=["5xx"]))
        retried = waypoint.run_load("pricing", profile)
    finally:
        waypoint.set_resilience("pricing")
        waypoint.set_fault("pricing", None)
    n1, e1 = len(plain.samples), int((plain.samples["status"] == 503).sum())
    n2, e2 = len(retried.samples), int((retried.samples["status"] == 503).sum())
    assert _inside(e1, n1, 0.3) and _inside(e2, n2, 0.3**4), (e1, n1, e2, n2)
    assert waypoint.request_as("loadgen", "pricing").status_code == 200  # the hop is gone again


def test_prometheus_labels_say_each_proxys_role(waypoint: LocalMesh) -> None:
    url = waypoint.prometheus_url() + "/api/v1/query"

    def roles(query: str) -> dict[str, float]:
        data = requests.get(url, params={"query": query}, timeout=5).json()["data"]["result"]
        return {r["metric"]["role"]: float(r["value"][1]) for r in data}

    assert roles('count by (role) (up{job="envoy"} == 1)') == {"node proxy": 2, "waypoint": 5}
    cpu = roles('count by (role) (workbench_process_cpu_seconds_total{kind="envoy"})')
    assert cpu == {"node proxy": 2, "waypoint": 5}
